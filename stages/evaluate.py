"""evaluate: metrics, predictions and calibration on the test split; the work is
mnistpipe.pipeline.evaluate.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.pipeline import load_and_pin


@exit_on_user_error
def main() -> None:
    params = load_and_pin()  # first: the math libraries read their code paths as torch loads
    from mnistpipe.pipeline import evaluate  # after pinning

    evaluate.run(params)


if __name__ == "__main__":
    main()
