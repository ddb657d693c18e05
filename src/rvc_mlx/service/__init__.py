"""The service layer every front end stands on (CLI, web UI and HTTP API, later live mode and corpus batch).

One concept per module, no front-end code, no MLX at import:

  voices.py    the voice library under ``$RVC_MLX_HOME/voices``; resolving ``-m NAME|FILE``; model facts
  models.py    which model files a conversion uses (voice, base models, index), checked to exist
  cache.py     a bounded (count and bytes) LRU cache of loaded networks, shared by converters
  db.py        the embedded SQLite store (jobs, presets), with numbered migrations
  presets.py   named option sets and a default preset per voice
  tasks.py     the work itself (convert, batch, pitch, download, add a voice), with progress callbacks
  jobs.py      persisted jobs run by one spawned MLX worker process (``worker.py``), with events
"""
