"""train: fit the model on the prepared training split (and once more per extra seed); the
work is mnistpipe.pipeline.train.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.pipeline import load_and_pin


@exit_on_user_error
def main() -> None:
    params = load_and_pin()  # first: the math libraries read their code paths as torch loads
    from mnistpipe.pipeline import train  # after pinning

    train.run(params)


if __name__ == "__main__":
    main()
