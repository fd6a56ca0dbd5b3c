"""Reading results back: statistics (``results``), the paper's transcribed numbers (``paper_tables``),
figures, [CLS] attention and EigenCAM. Import the module you need, e.g.
``from colormae.analysis import results``."""
