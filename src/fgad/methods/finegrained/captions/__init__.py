"""MFSC caption records of FineGrainedAD: the schema and validation, the heuristic drafter and the local-LLM drafter.
Torch-free; modules are imported one by one."""
