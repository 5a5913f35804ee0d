"""The Shapes world: scenes, rendering, prompts, edits and a pixel-only detector (see ``tasks`` for the
training-data API)."""
