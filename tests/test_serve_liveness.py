"""The liveness check's verdicts, on given answers: equal to PEFT's and not the base's passes; anything else stops
the server naming the run and both answers."""

import pytest

from lorafit.core.errors import AdapterNotLive
from lorafit.serve import liveness

REFERENCES = {"base": "Hello.", "support": "Your parcel ships today.", "billing": "Your invoice is attached."}


def test_answers_equal_to_peft_and_unlike_the_base_pass():
    assert liveness.check(REFERENCES.get, REFERENCES, "base") == REFERENCES


def test_a_served_answer_that_is_not_pefts_names_the_run_and_both_answers():
    served = {**REFERENCES, "billing": "Hello."}
    with pytest.raises(AdapterNotLive) as exc:
        liveness.check(served.get, REFERENCES, "base")
    message = str(exc.value)
    assert message.startswith("billing:") and "served 'Hello.'" in message and "'Your invoice is attached.'" in message
    assert AdapterNotLive.exit_code == 3


def test_an_adapter_that_answers_as_the_base_is_not_live():
    references = {**REFERENCES, "support": "Hello."}
    with pytest.raises(AdapterNotLive, match="support: the adapter answers the probe exactly as the base does"):
        liveness.check(references.get, references, "base")
