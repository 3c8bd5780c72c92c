"""One grid point's life: lease, train or resume, measure, record, clean up (lifecycle); its
runs recorded under earlier keys (migrate); its files (files: lease, checkpoint, kept record);
interruptions and injected faults (interrupt, faults); where and how fast it runs (device); and
how many points share a GPU (packing).

May import: settings, record, data, train, measure.
"""
