"""The parts of :class:`goblinfs.storage.cloudfiles.CloudFileStorage`, one concern per module.

* :mod:`.session` — a swiftclient Connection per thread, auth, error mapping, retries and
  timeouts, the worker pool, the http.client chunked PUT of streamed segments.
* :mod:`.listing` — container listings and object metadata (mtime, content type, etags) as
  :class:`~goblinfs.storage.Entry` objects.
* :mod:`.largeobjects` — SLO and DLO: segment naming, SegmentUploader, SegmentStream, manifests.
* :mod:`.io` — SwiftReader and SwiftWriter file objects.
"""
