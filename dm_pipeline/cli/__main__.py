"""`python -m dm_pipeline.cli`: the same as the `dm-pipeline` console script."""

from dm_pipeline.cli import main

if __name__ == "__main__":
    main(prog_name="dm-pipeline")
