"""LLM agent types for tests that run in `mesh worker` processes (`--app llm_apps`).

They use the offline model (a policy over what the model is shown), so a worker process needs no
network and answers the same after every restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import agents
from agents.items import TResponseOutputItem

from mesh.llm import LLMAgent
from mesh.models import OfflineModel, OfflineView


def user_texts(view: OfflineView) -> list[str]:
    return [str(i.get("content")) for i in view.items if i.get("role") == "user"]


def recall_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    """Answers with the user messages it was shown: proof of what memory held."""
    texts = user_texts(view)
    if len(texts) <= 10:
        return view.say(f"{len(texts)} user messages: {' | '.join(texts)}")
    return view.say(f"{len(texts)} user messages; first: {texts[0][:24]}; last: {texts[-1][:24]}")


class Recall(LLMAgent):
    type = "recall"
    memory_max_items = 1000

    def build_agent(self) -> agents.Agent[Any]:
        return agents.Agent(name="Recall", instructions="Repeat what you were told.", model=OfflineModel(recall_policy))


AGENTS = [Recall]
