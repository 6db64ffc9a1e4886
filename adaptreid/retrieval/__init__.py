"""Using an adapted model: features of new crops, "where else did this person appear?".

* :mod:`.features`: a features file (``.npz``, or Parquet with pyarrow) holding each image's
  feature, path, camera id (-1 unknown), identity when known, and the model's fingerprint;
* :mod:`.embed`: a checkpoint's model turned into an :class:`~.embed.Embedder` that extracts
  features exactly as ``adaptreid evaluate`` does (same transform, same extraction function);
* :mod:`.search`: ranked matches of query features in gallery features (pure on arrays),
  optionally k-reciprocal re-ranked (Zhong et al., CVPR 2017);
* :mod:`.commands`: ``adaptreid embed`` and ``adaptreid search``; the search results page is
  drawn by :mod:`adaptreid.webpage`.
"""
