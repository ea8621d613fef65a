"""A client nobody here wrote: the official `openai` SDK (test extra) against `python -m deliberate.judge.serve`,
both backends, as a separate process."""
import re
import subprocess
import sys

import pytest

openai = pytest.importorskip("openai")

from deliberate.judge import lexicon, rubrics  # noqa: E402

BACKENDS = {"lexicon": [], "model": ["--generate-fn", "deliberate.judge.echo_model:factory"]}


@pytest.fixture(scope="module", params=list(BACKENDS))
def served(request):
  proc = subprocess.Popen([sys.executable, "-m", "deliberate.judge.serve", "--backend", request.param, "--port", "0",
                           *BACKENDS[request.param]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", proc.stdout.readline()).group(1)
    yield request.param, openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
  finally:
    proc.terminate()
    proc.wait(10)


def _msgs():
  return rubrics.ca_messages("Share the well?", None, None, "We share the well and inform both towns fairly.")


def test_models_list(served):
  backend, client = served
  [model] = client.models.list().data
  assert model.id == (lexicon.MODEL_NAME if backend == "lexicon" else "deliberate-local-judge (model)")


@pytest.mark.parametrize("kw", [{}, {"max_tokens": 64}], ids=["no_max_tokens", "max_tokens"])
def test_chat_completion(served, kw):
  backend, client = served
  r = client.chat.completions.create(model="any", messages=_msgs(), temperature=0, **kw)
  assert r.object == "chat.completion" and len(r.choices) == 1
  assert r.choices[0].finish_reason == "stop" and re.search(r"\nScore: [0-5]$", r.choices[0].message.content)
  assert r.usage.total_tokens > 0
  if backend == "lexicon":
    assert r.model == lexicon.MODEL_NAME and "deterministic local judge" in r.choices[0].message.content


def test_n_choices(served):
  _, client = served
  r = client.chat.completions.create(model="any", messages=_msgs(), n=3)
  assert [c.index for c in r.choices] == [0, 1, 2]
  assert len({c.message.content for c in r.choices}) == 1  # both backends are deterministic here


def test_length_finish_reason_reaches_the_sdk(served):
  backend, client = served
  if backend == "lexicon":
    pytest.skip("the lexicon backend ignores max_tokens (its answers are short and deterministic)")
  r = client.chat.completions.create(model="any", messages=_msgs(), max_tokens=2)
  assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kw,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 99}, "n"),
])
def test_bad_requests_raise_the_sdks_error(served, kw, param):
  _, client = served
  with pytest.raises(openai.BadRequestError) as e:
    client.chat.completions.create(model="any", **kw)
  assert e.value.status_code == 400 and e.value.body["param"] == param
  assert f"request.{param}" in e.value.message


def test_prompt_the_backend_cannot_answer_is_a_400_with_its_reason(served):
  backend, client = served
  if backend == "model":
    pytest.skip("the model backend answers any chat")
  with pytest.raises(openai.BadRequestError, match="rubric"):
    client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}])
