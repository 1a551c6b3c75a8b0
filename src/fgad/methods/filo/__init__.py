"""FiLo++ (METHOD.md section 1): FusDes prompts, the linear and MDCI heads, the adapter, training, evaluation,
export to a bundle, and the DefLoc box priors."""
