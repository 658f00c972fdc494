"""Datasets: atomic files, their preparation and the item-side data of the pipeline."""
