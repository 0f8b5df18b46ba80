"""A local Tencent CI for batch jobs (`cirelay emulator`, `cirelay serve --sandbox`).

It speaks the `inventorytriggerjob` and media-job calls the way CI does (signed requests, XML
answers, CI error documents), runs every batch's media jobs on a small worker pool, and delivers
TaskFinish callbacks by URL or TDMQ, with knobs that inject the faults cirelay must survive.
"""
