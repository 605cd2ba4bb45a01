"""``manage.py process_documents``: the retry path of document processing.

An upload schedules ``cases.services.document_process`` after its commit. If that run
hits a database error (statement timeout, serialization failure, lost connection) the
document stays ``pending`` and unbilled for processing; this command, run from cron,
processes such documents later.
"""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from cases.models import Document, DocumentProcessingStatus
from cases.services import document_process
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

    Selects the ``pending`` documents uploaded more than N minutes ago (default 10, so
    that it does not race an upload's own after-commit processing), oldest first, of
    every organization or of one, through the explicit cross-tenant path
    (``tenancy.context.cross_tenant``: reading several organizations' documents is
    operator work). Each is then processed in its own organization's tenant transaction
    by ``cases.services.document_process``, which locks the row and handles only a
    document that is still ``pending``: running this twice, or beside an upload's own
    processing, bills no page twice.

    Prints one line per document and a summary. A document whose processing hits a
    database error stays ``pending`` (the next run retries it) and makes the command
    exit with status 1 after the summary; a document that cannot be processed (not a
    database error) is marked ``failed`` and is not an error of the command.
    """

    help = (
        "Process pending documents: page count + doc.processed billing event. Documents "
        "still pending (their processing after upload hit a database error) uploaded more "
        "than --older-than-minutes ago are processed, each once (the row is locked and only "
        "a pending document is handled). Exits 1 if any hit a database error (they stay "
        "pending for the next run)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than-minutes",
            type=_non_negative_int,
            default=10,
            metavar="N",
            help="Only documents uploaded more than N minutes ago (default 10: leaves "
            "recent uploads to their own after-commit processing).",
        )
        parser.add_argument("--organization", metavar="SLUG", help="Only this organization.")
        parser.add_argument(
            "--limit", type=_positive_int, metavar="N", help="At most N documents, oldest first."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be processed; change nothing."
        )

    def handle(self, *args, **opts):
        """Process the selected pending documents one by one.

        Raises:
            CommandError: unknown ``--organization``; or (exit status 1, after the
                summary) at least one document hit a database error and stays pending.
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
        if opts["dry_run"]:
            for index, document in enumerate(documents, start=1):
                self.stdout.write(f"{self._label(index, len(documents), document)} would process")
            self.stdout.write("Dry run: nothing was processed or billed.")
            return

        totals = {"processed": 0, "failed": 0, "skipped": 0, "database errors": 0}
        began = time.monotonic()
        for index, document in enumerate(documents, start=1):
            label = self._label(index, len(documents), document)
            started = timezone.now()
            try:
                result = document_process(
                    organization=document.organization, document_id=document.pk
                )
            except DatabaseError as exc:
                totals["database errors"] += 1
                self.stderr.write(
                    f"{label} database error, still pending: {exc.__class__.__name__}: {exc}"
                )
                continue
            if result is None:
                totals["skipped"] += 1
                self.stdout.write(f"{label} skipped: deleted since")
            elif result.processed_at is None or result.processed_at < started:
                totals["skipped"] += 1
                self.stdout.write(f"{label} skipped: already {result.processing_status}")
            elif result.processing_status == DocumentProcessingStatus.PROCESSED:
                totals["processed"] += 1
                self.stdout.write(f"{label} processed, {result.page_count} page(s) billed")
            else:
                totals["failed"] += 1
                self.stdout.write(f"{label} failed: {result.processing_failure_reason}")
        elapsed = time.monotonic() - began
        self.stdout.write(
            f"Done in {elapsed:.1f} s: "
            + ", ".join(f"{count} {name}" for name, count in totals.items())
            + "."
        )
        if totals["database errors"]:
            raise CommandError(
                f"{totals['database errors']} document(s) hit a database error and stay "
                "pending; see above. The next run retries them."
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
    def _label(index: int, total: int, document: Document) -> str:
        return (
            f"[{index}/{total}] {document.pk} ({document.organization.slug}, "
            f"{document.original_filename!r}, uploaded {document.uploaded_at.isoformat()}):"
        )
