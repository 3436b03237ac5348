"""Offline batch jobs over a trained model, on Ray Data: ``predict`` (score rows of a table) and
``recommend`` (precompute top-K per user). They sit above serving, export and training in the
import layers because they reuse all three: the bundle's ranker and request pipeline, and the
checkpoint loader."""
