"""train: fit the model on the prepared training split (and once more per extra seed); the
work is mnistpipe.pipeline.train.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.numerics import pin_from_params


@exit_on_user_error
def main() -> None:
    params = pin_from_params()  # first: the math libraries read their code paths as they load
    from mnistpipe.pipeline import train

    train.run(params)


if __name__ == "__main__":
    main()
