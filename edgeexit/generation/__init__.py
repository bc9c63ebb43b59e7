"""Text generation on the device from decoder packages: ONNX Runtime and tokenizers, no torch.

``DecoderEngine(package).generate(prompt, max_new_tokens)`` is the entry point; ``edgeexit generate``
is its command.
"""

from edgeexit.generation.engine import MODES, DecoderEngine, Generation
from edgeexit.generation.manifest import DecoderManifest
from edgeexit.generation.package import DecoderPackage, open_decoder_package

__all__ = ["MODES", "DecoderEngine", "DecoderManifest", "DecoderPackage", "Generation", "open_decoder_package"]
