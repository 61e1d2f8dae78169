"""transformer's module settings (environment `TRANSFORMER_<FIELD>`, twin desired properties `<field>`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .contract import DatasetContract
from .core import Limits


class TransformerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    share_dir: str = "/data/share"
    """The local share (read-only), where announced files are read from."""
    cloud_share_dir: str = "/data/cloud-share"
    """Where clean Parquet and the quarantine are written (and uploaded from)."""
    datasets: dict[str, DatasetContract] = Field(default_factory=dict)
    """Dataset name -> contract. Wins over a `_schema.json` beside the data and over a pinned inference."""
    contract_file: str = "_schema.json"
    """A contract beside the data: `<share>/<dataset>/<contract_file>`."""
    infer_contracts: bool = True
    """Without a contract, infer one from a dataset's first file and pin it (reported as `pinned_contracts`);
    when false such files are quarantined with reason `no_contract`."""
    max_memory_mb: int = Field(default=512, ge=64, le=65536)
    max_line_kb: int = Field(default=256, ge=1, le=65536)
    rows_per_part: int = Field(default=1_000_000, ge=1000)
    """Rows per output Parquet part. Output names depend on it: change it only for new data, or files
    transformed again would land under new names."""

    @model_validator(mode="after")
    def _limits_fit(self) -> TransformerSettings:
        self.limits()  # a line limit the memory budget cannot hold is refused here, not mid-file
        return self

    def limits(self) -> Limits:
        defaults = Limits()
        max_line = self.max_line_kb * 1024
        # A CSV line must fit in one read block, and a block in one chunk.
        read_block = max(defaults.read_block_bytes, max_line)
        return Limits(
            max_memory_bytes=self.max_memory_mb * 2**20,
            read_block_bytes=read_block,
            chunk_bytes=max(defaults.chunk_bytes, read_block),
            max_line_bytes=max_line,
            rows_per_part=self.rows_per_part,
            max_open_parts=defaults.max_open_parts,
        )
