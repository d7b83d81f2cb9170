"""ComfyUI's ``/api/jobs`` view of the queue and the history: one flat record per prompt.

The web editor's queue and assets panels read it. A job is ``{"id", "status", "priority", "create_time",
...}`` with ``status`` one of pending, in_progress, completed, failed, cancelled (an interrupted prompt);
finished ones add ``execution_start_time`` / ``execution_end_time`` (ms, from the status messages),
``execution_error``, ``outputs_count`` and ``preview_output`` (the first image, an ``output`` one first);
``GET /api/jobs/{id}`` adds ``outputs``, ``execution_status`` and ``workflow``. ComfyUI 0.33 adds
``previewable_outputs_count`` (the outputs its assets panel can show: images, video, audio, 3D, text), asked
for with ``previewable=True``.
"""
from __future__ import annotations

from typing import Any

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
_HISTORY_STATUSES = {"completed", "failed", "cancelled"}
_PREVIEWABLE_MEDIA = {"images", "video", "audio", "3d", "text"}
_PREVIEWABLE_SUFFIXES = (".obj", ".fbx", ".gltf", ".glb", ".usdz", ".txt", ".md", ".json")


def _pruned(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if v is not None}


def _metadata(extra_data: dict[str, Any]) -> tuple[Any, Any]:
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    return extra_data.get("create_time"), workflow.get("id") if isinstance(workflow, dict) else None


def queued_job(item: list[Any], status: str, previewable: bool = False) -> dict[str, Any]:
    number, prompt_id, _, extra_data, _ = item
    created, workflow_id = _metadata(extra_data)
    job = {"id": prompt_id, "status": status, "priority": number, "create_time": created, "outputs_count": 0}
    if previewable:
        job["previewable_outputs_count"] = 0
    return _pruned({**job, "workflow_id": workflow_id})


def _previewable_count(outputs: dict[str, Any]) -> int:
    """ComfyUI 0.33's count of the outputs its expanded assets view shows (not ``animated`` flags)."""
    count = 0
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for media, items in ui.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                kind = str(item.get("format") or "")
                if (media in _PREVIEWABLE_MEDIA or kind.startswith(("video/", "audio/"))
                        or str(item.get("filename", "")).lower().endswith(_PREVIEWABLE_SUFFIXES)):
                    count += 1
    return count


def _outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    count, preview, fallback = 0, None, None
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for media, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                shown = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media)}
                if preview is None and item.get("type") == "output":
                    preview = shown
                elif fallback is None:
                    fallback = shown
    return count, preview or fallback


def finished_job(prompt_id: str, record: dict[str, Any], full: bool = False,
                 previewable: bool = False) -> dict[str, Any]:
    number, _, prompt, extra_data, _ = record["prompt"]
    created, workflow_id = _metadata(extra_data)
    status_info = record.get("status") or {}
    started = ended = error = None
    interrupted = False
    for event, data in status_info.get("messages", []):
        if event == "execution_start":
            started = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            ended = data.get("timestamp")
            error = data if event == "execution_error" else error
            interrupted = interrupted or event == "execution_interrupted"
    if status_info.get("status_str") == "error":
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"
    count, preview = _outputs_summary(record.get("outputs", {}))
    job = {"id": prompt_id, "status": status, "priority": number, "create_time": created,
           "execution_start_time": started, "execution_end_time": ended, "execution_error": error,
           "outputs_count": count}
    if previewable:
        job["previewable_outputs_count"] = _previewable_count(record.get("outputs", {}))
    job = _pruned({**job, "preview_output": preview, "workflow_id": workflow_id})
    if full:
        job.update(outputs=record.get("outputs", {}), execution_status=status_info,
                   workflow={"prompt": prompt, "extra_data": extra_data})
    return job


def all_jobs(running: list, pending: list, history: dict[str, Any], statuses: list[str] | None = None,
             workflow_id: str | None = None, sort_by: str = "created_at", sort_order: str = "desc",
             previewable: bool = False) -> list[dict]:
    wanted = set(statuses or STATUSES)
    jobs = [queued_job(i, "in_progress", previewable) for i in running] if "in_progress" in wanted else []
    jobs += [queued_job(i, "pending", previewable) for i in pending] if "pending" in wanted else []
    if wanted & _HISTORY_STATUSES:
        jobs += [j for j in (finished_job(k, v, previewable=previewable) for k, v in history.items())
                 if j["status"] in wanted]
    if workflow_id:
        jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
    if sort_by == "execution_duration":
        def key(job: dict) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0
    else:
        def key(job: dict) -> float:
            return job.get("create_time") or 0
    return sorted(jobs, key=key, reverse=sort_order == "desc")


def find_job(prompt_id: str, running: list, pending: list, history: dict[str, Any],
             previewable: bool = False) -> dict[str, Any] | None:
    if prompt_id in history:
        return finished_job(prompt_id, history[prompt_id], full=True, previewable=previewable)
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item[1] == prompt_id:
                return queued_job(item, status, previewable)
    return None
