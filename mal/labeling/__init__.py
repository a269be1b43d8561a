"""Labeling a COCO file: every box gets a mask, and the job ends as one COCO file with RLE masks. A job
can run as N shards (processes or machines), be killed at any moment, and resume without redoing
finished work.

The modules, top to bottom (each imports only modules below it; the way of ``mal label`` from
:func:`mal.labeling.label.label` to the merged file goes down this list):

- :mod:`.label`: the entry: :func:`~.label.label` (``mal label``, :func:`mal.api.label`, and every
  engine through :func:`mal.engines.label_with_engine`) and :func:`~.label.merge` (``mal merge``);
- :mod:`.labelers`: the trained model or an engine as the loop's ``ImageLabeler``, and its identity;
- :mod:`.loop`: one shard's images through a labeler into chunks, then the merge; :class:`~.loop.LabelSummary`;
- :mod:`.record`: one output annotation (RLE, true area, score, fallback flag, or a person's mask);
- :mod:`.merge`: every chunk into the output file, under ``merge.lock``, each score shifted by its
  category's offset;
- :mod:`.manifest`: ``job.json``, and opening a work dir for labeling or merging;
- :mod:`.store`: the chunk files of a work dir;
- :mod:`.plan`: which images each chunk of each shard holds, and ``--shard i/N``.

The words, used with these meanings only:

- **job**: labeling one annotations file with one labeler (and its settings) into one output file.
- **work dir**: the folder holding a job's files until the merge (default ``<out>.parts/``; "parts",
  as in ``--keep-parts`` and :class:`~.store.PartsError`, always means this folder).
- **shard**: one of the N slices of a job's images, each labeled by one process (``--shard i/N``).
- **chunk**: up to K consecutive images of one shard (``--chunk-images K``), and the one file that
  holds their results.
- **merge**: writing the output file from every chunk of every shard, once all are written (the scores are
  shifted by category then: it needs every box of the job).

Work dir::

    job.json                          the job's manifest (mal.labeling.manifest): input hash, labeler identity, N, K
    shard-0-of-2/chunk-00000.jsonl    one chunk (mal.labeling.store)
    merge.lock                        flock'ed while a finished shard checks for completion and merges
                                      (mal.labeling.merge)
"""
