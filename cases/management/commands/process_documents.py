"""``manage.py process_documents``: defer processing again for documents still pending.

An upload defers the ``process_document`` job in its own transaction, and a worker
processes the document (``cases.tasks``), retrying transient errors with backoff. A
document can still be ``pending`` with no job on its way: its job failed for good (retries
exhausted while the database or the storage was down), a finished job was purged, or an
operator cancelled it. This operator command defers a new job for each such document;
the workers do the processing.
"""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob

from cases.models import Document, DocumentProcessingStatus
from cases.tasks import defer_processing, process_document
from tenancy.context import cross_tenant
from tenancy.models import Organization


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    """``manage.py process_documents [--older-than-minutes N] [--organization SLUG]
    [--limit N] [--dry-run]``.

    Selects the ``pending`` documents uploaded more than N minutes ago (default 10),
    oldest first, of every organization or of one, through the explicit cross-tenant path
    (``tenancy.context.cross_tenant``: reading several organizations' documents is
    operator work). A document whose ``process_document`` job is still waiting (``todo``,
    a retry included) or running (``doing``) is left to it; for every other one a job is
    deferred (``cases.tasks.defer_processing``, with the document's queueing lock, so a
    concurrent run cannot queue it twice). The job processes a document only while it is
    ``pending`` and bills its pages once, so running this twice bills nothing twice.

    Prints one line per document and a summary. A database error while deferring is
    reported for that document (it stays as it was) and makes the command exit with
    status 1 after the summary.
    """

    help = (
        "Defer processing (the process_document job) again for documents still pending "
        "whose job failed or is gone, uploaded more than --older-than-minutes ago; the job "
        "workers process them. Documents whose job is still waiting or running are left "
        "to it. Exits 1 if any could not be deferred (database error)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-minutes",
            type=_non_negative_int,
            default=10,
            metavar="N",
            help="Only documents uploaded more than N minutes ago (default 10: a recent "
            "upload's own job is normally still on its way).",
        )
        parser.add_argument("--organization", metavar="SLUG", help="Only this organization.")
        parser.add_argument(
            "--limit", type=_positive_int, metavar="N", help="At most N documents, oldest first."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be deferred; change nothing."
        )

    def handle(self, *args, **opts):
        """Defer a ``process_document`` job for each selected pending document.

        Raises:
            CommandError: unknown ``--organization``; or (exit status 1, after the
                summary) at least one document could not be deferred.
        """
        cutoff = timezone.now() - timedelta(minutes=opts["older_than_minutes"])
        organization = None
        if opts["organization"]:
            organization = Organization.objects.filter(slug=opts["organization"]).first()
            if organization is None:
                raise CommandError(f"No organization with slug {opts['organization']!r}.")
        documents = self._pending(cutoff, organization, opts["limit"])
        scope = f" of {organization.slug}" if organization else ""
        self.stdout.write(
            f"{len(documents)} pending document(s){scope} uploaded before {cutoff.isoformat()}."
        )
        open_jobs = self._open_jobs(documents)
        totals = {"deferred": 0, "already queued": 0, "database errors": 0}
        began = time.monotonic()
        for index, document in enumerate(documents, start=1):
            label = self._label(index, len(documents), document)
            job = open_jobs.get(str(document.pk))
            if job is not None:
                totals["already queued"] += 1
                state = "waiting" if job.status == "todo" else "running"
                self.stdout.write(f"{label} already has job {job.pk} ({state})")
                continue
            if opts["dry_run"]:
                self.stdout.write(f"{label} would defer processing")
                continue
            try:
                job_id = defer_processing(
                    organization=document.organization, document_id=document.pk
                )
            except DatabaseError as exc:
                totals["database errors"] += 1
                self.stderr.write(f"{label} database error: {exc.__class__.__name__}: {exc}")
                continue
            if job_id is None:
                totals["already queued"] += 1
                self.stdout.write(f"{label} already has a job waiting")
            else:
                totals["deferred"] += 1
                self.stdout.write(f"{label} deferred: job {job_id}")
        if opts["dry_run"]:
            self.stdout.write("Dry run: nothing was deferred.")
            return
        elapsed = time.monotonic() - began
        self.stdout.write(
            f"Done in {elapsed:.1f} s: "
            + ", ".join(f"{count} {name}" for name, count in totals.items())
            + "."
        )
        if totals["database errors"]:
            raise CommandError(
                f"{totals['database errors']} document(s) could not be deferred (database "
                "error); see above. They stay pending; run the command again."
            )

    @staticmethod
    def _pending(cutoff, organization, limit) -> list[Document]:
        """Pending documents uploaded before ``cutoff``, oldest first, with their
        organization; read through the explicit cross-tenant path."""
        with cross_tenant(reason="process_documents: pending documents of every organization"):
            documents = Document.objects.filter(
                processing_status=DocumentProcessingStatus.PENDING, uploaded_at__lt=cutoff
            )
            if organization is not None:
                documents = documents.for_organization(organization)
            documents = documents.select_related("organization").order_by("uploaded_at", "pk")
            if limit:
                documents = documents[:limit]
            return list(documents)

    @staticmethod
    def _open_jobs(documents) -> dict[str, ProcrastinateJob]:
        """The waiting or running ``process_document`` job of each of ``documents`` that
        has one, by document id (a string, as in the job's arguments)."""
        ids = [str(document.pk) for document in documents]
        jobs = ProcrastinateJob.objects.filter(
            task_name=process_document.name,
            status__in=["todo", "doing"],
            args__document_id__in=ids,
        ).order_by("id")
        return {job.args["document_id"]: job for job in jobs}

    @staticmethod
    def _label(index: int, total: int, document: Document) -> str:
        return (
            f"[{index}/{total}] {document.pk} ({document.organization.slug}, "
            f"{document.original_filename!r}, uploaded {document.uploaded_at.isoformat()}):"
        )
