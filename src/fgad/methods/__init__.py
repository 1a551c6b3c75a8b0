"""The anomaly-detection methods as siblings (FiLo++ in ``filo``, FineGrainedAD in ``finegrained``) behind one
registry (:mod:`fgad.methods.registry`)."""
