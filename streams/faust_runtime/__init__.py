"""Where this project's workers change how faust and aiokafka behave, one change a module.

- ``consumer``: faust's transport consumer hands messages to the streams inline (QuickDrain)
  and holds the flow while it seeks after a rebalance (SeekWithFlowHeld).
- ``batching``: batches that close when nothing more is waiting (faust's ``take_events``
  waits for a count or a timer).
- ``outbox``: a processing round's records sent as one record batch per partition (faust sends
  each record on its own).
- ``tables``: tables whose changelog records go out through an ``Outbox`` and whose RocksDB
  stores write without a write-ahead log.
- ``monitor``: faust's Monitor off the per-message sensors.
- ``event_loop``: uvloop as the event loop of faust apps.
- ``heap``: CPython's garbage collector freezes the survivors of full collections.
"""
