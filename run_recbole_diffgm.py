"""Train and test one model: ``python run_recbole_diffgm.py --model=SASRec --dataset=amazon-beauty``."""

import sys

from recbole_diffgm.cli import main

if __name__ == "__main__":
    sys.exit(main())
