"""edgeloop transformer: one input file in, clean partitioned Parquet plus quarantine out.

Pure library (no transport): `transform_file` is the whole job for one file; the module's wiring turns
its TransformResult into `batch-ready` and `quarantined` messages.
"""

from .contract import ColumnSpec, ColumnType, DatasetContract, OnInvalid, schema_fingerprint
from .core import ContractInferenceError, Limits, TransformResult, infer_contract, transform_file
from .readers import FileFormat, FileRejection, RejectReason
from .writer import BatchOutput, QuarantineOutput, quarantine_file, remove_stale_temps

__all__ = [
    "BatchOutput",
    "ColumnSpec",
    "ColumnType",
    "ContractInferenceError",
    "DatasetContract",
    "FileFormat",
    "FileRejection",
    "Limits",
    "OnInvalid",
    "QuarantineOutput",
    "RejectReason",
    "TransformResult",
    "infer_contract",
    "quarantine_file",
    "remove_stale_temps",
    "schema_fingerprint",
    "transform_file",
]
