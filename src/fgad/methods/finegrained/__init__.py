"""FineGrainedAD (METHOD.md section 2): MFSC caption records, multi-level prompts and alignment.

Modules are imported one by one (``from fgad.methods.finegrained.captions.schema import load_caption``); this
package file imports nothing, so the torch-free caption tools never pull in the model code.
"""
