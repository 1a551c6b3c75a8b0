"""FiLo++'s box priors (DefLoc): the base protocol and registry, the in-graph objectness prior and Grounding DINO."""
