"""Labeling a COCO file: every box gets a mask, written as one COCO file with RLE masks, by a job that
may run as N shards, be killed at any moment and resume (the words: :mod:`mal.labeling.store`)."""
