"""The descriptor pool of edgeexit's generated messages (see tools/generate_protos.py: it keeps
them apart from tritonclient's identical ``inference.*`` symbols in protobuf's default pool)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
