"""The experiment harness: sweeps (TOML), tables and plots. It reads run logs; it never trains itself.

* :mod:`gist.harness.sweep`: sweep configs and resumable sweeps (``gist sweep``).
* :mod:`gist.harness.curves`: run logs as per-round curves and per-run rows.
* :mod:`gist.harness.tables`: the summary table (``gist table``).
* :mod:`gist.harness.plots`: accuracy versus bytes and versus time.
"""
