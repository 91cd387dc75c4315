"""`python -m tests.support.standin_cli train ...`: the real `kubetune` CLI, with the data
pipeline routed to the test stand-in (TEMPORARY, see tests/support/training.py).

Data-parallel workers run the module their launcher was started as, so they get the
stand-in too.
"""

from kubetune.cli import main
from kubetune.trainer import run
from tests.support.training import standin_prepare_data

run.prepare_data = standin_prepare_data

if __name__ == "__main__":
    main()
