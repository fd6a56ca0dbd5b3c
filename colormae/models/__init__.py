"""Networks: the MAE (timm blocks) and its exports, the ViT feature backbone, UperNet and ViTDet
Mask R-CNN. Knows no run directory."""
from .backbone import FeaturePyramid, ViTFeatures, transfer_export
from .mae import (
                  CONTROL,
                  PRESETS,
                  MAEConfig,
                  MaskedAutoencoder,
                  export_encoder,
                  get_config,
                  mae_from_checkpoint,
                  mae_model,
                  reconstruct,
                  timm_vit_from_export,
                  untrained_encoder,
)
from .upernet import UperNetViT
from .vitdet import build_maskrcnn

__all__ = ["FeaturePyramid", "ViTFeatures", "transfer_export", "CONTROL", "PRESETS", "MAEConfig", "MaskedAutoencoder",
           "export_encoder", "get_config", "mae_from_checkpoint", "mae_model", "reconstruct", "timm_vit_from_export",
           "untrained_encoder", "UperNetViT", "build_maskrcnn"]
