"""From a block template to a Stratum job, and from a winning share back to a full block.

`build_job` does the work once per template and payout: coinbase split, merkle branch, network target.
Everything block assembly needs later rides on `Job.context` as a `JobContext`, which Stratum never reads.
`assemble_block` is STRATUM-SPEC §3.7: header | varint(1 + n) | coinbase | template transactions in order.
"""
from __future__ import annotations

from dataclasses import dataclass

from stratum.jobs import Job

from .coinbase import CoinbaseParts, build_coinbase, witness_commitment_for
from .merkle import merkle_branch
from .script import encode_varint
from .targets import target_from_nbits
from .template import BlockTemplate
from .validation import header_from_job


class BlockAssemblyError(ValueError):
    """A winning share that cannot be turned into a block for this job (wrong extranonce sizes, no context)."""


@dataclass(frozen=True, slots=True)
class TemplateWork:
    """The per-template parts shared by every job built from it, whatever the payout or tag."""
    template: BlockTemplate
    merkle_branch: tuple[bytes, ...]
    transactions_data: bytes         # the template's transactions serialised back to back, in order
    network_target: int
    witness_commitment: bytes | None


@dataclass(frozen=True, slots=True)
class JobContext:
    """What `assemble_block` needs beyond the Job itself."""
    work: TemplateWork
    coinbase: CoinbaseParts
    extranonce1_size: int
    extranonce2_size: int

    @property
    def template(self) -> BlockTemplate:
        return self.work.template


def prepare_template(template: BlockTemplate) -> TemplateWork:
    """The expensive per-template part: with thousands of transactions, worth doing once."""
    return TemplateWork(
        template=template,
        merkle_branch=tuple(merkle_branch([tx.txid for tx in template.transactions])),
        transactions_data=b"".join(tx.data for tx in template.transactions),
        network_target=target_from_nbits(template.bits),
        witness_commitment=witness_commitment_for(template),
    )


def job_from_work(work: TemplateWork, job_id: str, payout_script: bytes, tag: bytes, extranonce1_size: int,
                  extranonce2_size: int, clean_jobs: bool, extra_push: bytes = b"") -> Job:
    template = work.template
    coinbase = build_coinbase(template.height, template.coinbasevalue, payout_script,
                              extranonce1_size + extranonce2_size, coinbaseaux=template.coinbaseaux, tag=tag,
                              extra_push=extra_push, witness_commitment=work.witness_commitment)
    return Job(
        job_id=job_id,
        prevhash=template.prev_hash,
        coinb1=coinbase.coinb1,
        coinb2=coinbase.coinb2,
        merkle_branch=work.merkle_branch,
        version=template.version,
        nbits=template.bits,
        ntime=template.curtime,
        clean_jobs=clean_jobs,
        network_target=work.network_target,
        height=template.height,
        min_ntime=template.mintime,
        context=JobContext(work, coinbase, extranonce1_size, extranonce2_size),
    )


def build_job(template: BlockTemplate, job_id: str, payout_script: bytes, tag: bytes, extranonce1_size: int,
              extranonce2_size: int, clean_jobs: bool, extra_push: bytes = b"") -> Job:
    """A Stratum job for `template`, paying the whole coinbasevalue to `payout_script`."""
    return job_from_work(prepare_template(template), job_id, payout_script, tag, extranonce1_size,
                         extranonce2_size, clean_jobs, extra_push)


class JobBuilder:
    """`build_job` with the per-template work kept for the latest template.

    Jobs for the same template differ only in their coinbase (payout, tag, extra push), so the merkle
    branch and transaction bytes are computed once per template, not once per job.
    """

    def __init__(self) -> None:
        self._work: TemplateWork | None = None

    def work_for(self, template: BlockTemplate) -> TemplateWork:
        if self._work is None or self._work.template is not template:
            self._work = prepare_template(template)
        return self._work

    def build_job(self, template: BlockTemplate, job_id: str, payout_script: bytes, tag: bytes,
                  extranonce1_size: int, extranonce2_size: int, clean_jobs: bool,
                  extra_push: bytes = b"") -> Job:
        return job_from_work(self.work_for(template), job_id, payout_script, tag, extranonce1_size,
                             extranonce2_size, clean_jobs, extra_push)


def assemble_block(job: Job, extranonce1: bytes, extranonce2: bytes, ntime: int, nonce: int,
                   version: int) -> bytes:
    """The full serialised block for a share on `job` (version is the final, rolled nVersion)."""
    context = job.context
    if not isinstance(context, JobContext):
        raise BlockAssemblyError(f"job {job.job_id!r} was not built by blockbuild (no JobContext)")
    if len(extranonce1) != context.extranonce1_size or len(extranonce2) != context.extranonce2_size:
        raise BlockAssemblyError(
            f"extranonce sizes {len(extranonce1)}+{len(extranonce2)} do not match the job's "
            f"{context.extranonce1_size}+{context.extranonce2_size}")
    header = header_from_job(job, extranonce1, extranonce2, ntime, nonce, version)
    coinbase = context.coinbase.for_block(extranonce1 + extranonce2)
    n_transactions = 1 + len(context.template.transactions)
    return header + encode_varint(n_transactions) + coinbase + context.work.transactions_data
