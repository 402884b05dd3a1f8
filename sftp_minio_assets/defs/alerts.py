"""Alerts on repeated errors: a file or a source that keeps failing.

When one file fails ALERT_AFTER_FAILURES times in a row, or a source's last
ALERT_AFTER_FAILURES transfers all failed, one message is posted to ALERT_WEBHOOK_URL
(Slack-compatible JSON, `{"text": ...}`) and logged. No storm: an alert stays open, silent,
until the file or source recovers, which posts one recovery message. Open alerts are rows of
the transfer log's `transfer_alerts` table, so restarts and several daemons agree.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass

import dagster as dg

from ..db.transfer_log import TransferLog
from .resources import AlertSettings, TransferLogResource, TransferSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    subject: str  # "file <source>/<key>" or "source <source>"
    text: str
    recovered: bool = False


def evaluate(transfer_log: TransferLog, threshold: int, retry_limit: int) -> list[Alert]:
    """Open alerts for new repeated failures, close those that recovered; what to send."""
    raised: list[tuple[str, str, str]] = []  # (subject, what happened, last error)
    for row in transfer_log.reports.failing_files(threshold):
        file = f"file {row['source']}/{row['filename']}"
        what = (
            "failed, and waits for a fix: retrying cannot help. Fix the cause, then rerun the "
            "failed partition."
            if row["permanent"]
            else f"failed {row['consecutive_failures']} times in a row."
        )
        raised.append((file, f"{file} {what}", row["error_message"]))
    for row in transfer_log.reports.out_of_retries(retry_limit):
        file = f"{row['source']}/{row['filename']}"
        what = (
            f"file {file} still fails after {row['auto_retries']} automatic retries; it is not "
            "retried again and waits for a rerun of its partition."
        )
        raised.append((f"retries of {file}", what, row["error_message"]))
    for row in transfer_log.reports.failing_sources(threshold):
        subject = f"source {row['source']}"
        what = f"the last {threshold} transfers of {subject} all failed."
        raised.append((subject, what, row["error_message"]))
    alerts = [
        Alert(subject, f":rotating_light: sftp-minio-assets: {what} Last error: {error}")
        for subject, what, error in raised
        if transfer_log.reports.open_alert(subject)
    ]
    for subject in transfer_log.reports.recovered_alerts():
        if transfer_log.reports.close_alert(subject):
            alerts.append(
                Alert(subject, f":white_check_mark: sftp-minio-assets: {subject} recovered.", True)
            )
    return alerts


def send(alert: Alert, webhook_url: str | None) -> None:
    """Log the alert, and post it to the webhook when one is configured.

    Its text holds no secret: error messages are redacted before they reach the log.
    """
    text = alert.text
    (log.info if alert.recovered else log.error)(text)
    if not webhook_url:
        return
    request = urllib.request.Request(
        webhook_url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        reply.read()


def _check(
    context,
    transfer_log: TransferLogResource,
    alerts: AlertSettings,
    transfer_settings: TransferSettings,
) -> None:
    retry_limit = transfer_settings.auto_retry_limit
    for alert in evaluate(transfer_log.log, alerts.after_failures, retry_limit):
        try:
            send(alert, alerts.webhook_url)
        except OSError as exc:  # the receiver is down: the alert stays open, and logged
            context.log.error(f"could not post the alert to the webhook: {exc}; {alert.text}")
        else:
            context.log.warning(alert.text)


@dg.run_failure_sensor(
    name="alert_on_repeated_failures",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a failed run: alert when a file or a source keeps failing.",
)
def alert_on_repeated_failures(
    context: dg.RunFailureSensorContext,
    transfer_log: TransferLogResource,
    alerts: AlertSettings,
    transfer_settings: TransferSettings,
) -> None:
    _check(context, transfer_log, alerts, transfer_settings)


@dg.run_status_sensor(
    name="alert_on_recovery",
    run_status=dg.DagsterRunStatus.SUCCESS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a successful run: one message for each alert whose subject recovered.",
)
def alert_on_recovery(
    context: dg.RunStatusSensorContext,
    transfer_log: TransferLogResource,
    alerts: AlertSettings,
    transfer_settings: TransferSettings,
) -> None:
    _check(context, transfer_log, alerts, transfer_settings)
