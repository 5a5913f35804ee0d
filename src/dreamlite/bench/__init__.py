"""Benchmarks in the formats of GenEval (``geneval``) and ImgEdit (``imgedit``) on the Shapes world."""
