"""prepare: parse the IDX files, split off validation, fix normalization, cache tensors; the
work is mnistpipe.pipeline.prepare.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.params import load_params


@exit_on_user_error
def main() -> None:
    params = load_params()
    from mnistpipe.pipeline import prepare  # torch loads here, not when the stage is imported

    prepare.run(params)


if __name__ == "__main__":
    main()
