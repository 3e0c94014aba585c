"""evaluate: metrics, predictions and calibration on the test split; the work is
mnistpipe.pipeline.evaluate.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.numerics import pin_from_params


@exit_on_user_error
def main() -> None:
    params = pin_from_params()  # first: the math libraries read their code paths as they load
    from mnistpipe.pipeline import evaluate

    evaluate.run(params)


if __name__ == "__main__":
    main()
