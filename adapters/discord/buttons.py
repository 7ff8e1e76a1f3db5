"""The buttons on answers: Stop while a run works, 👍/👎 on a finished answer.

Both are `DynamicItem`s: their state is in the `custom_id` (`discord_rules` makes and parses it)
and the client registers them in `setup_hook`, so a button pressed after a restart still reaches
the bot. Every press gets its answer within Discord's 3 s: a Stop by the asker is acknowledged
without a message (the streamed message itself then says the run stopped), everything else gets
a short message only the presser sees.
"""

from __future__ import annotations

from typing import Any, Protocol

import discord

from adapters.discord import rules

NOT_RUNNING = "That answer is no longer being written, so there is nothing to stop."
NOT_YOURS = "Only the person who asked (or someone who can manage messages here) can stop this answer."
THANKS = {"good": "Thanks! Glad it helped.", "bad": "Thanks for telling me; I'll use it to get better."}
NOT_SAVED = "Sorry, I couldn't save that right now; please try again later."


class Presses(Protocol):
    """What the buttons ask of the adapter."""

    async def on_stop(self, interaction: discord.Interaction, run_id: str) -> None: ...

    async def on_feedback(self, interaction: discord.Interaction, channel_id: int, value: str) -> None: ...


def _handler(interaction: discord.Interaction) -> Presses:
    return interaction.client.adapter  # type: ignore[attr-defined]  # ZennDiscordClient


class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=rules.STOP_TEMPLATE):
    def __init__(self, run_id: str) -> None:
        super().__init__(discord.ui.Button(label="Stop", emoji="⏹️", style=discord.ButtonStyle.danger,
                                           custom_id=rules.stop_custom_id(run_id)))
        self.run_id = run_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any, /) -> StopButton:
        return cls(match["run_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _handler(interaction).on_stop(interaction, self.run_id)


class FeedbackButton(discord.ui.DynamicItem[discord.ui.Button], template=rules.FEEDBACK_TEMPLATE):
    def __init__(self, value: str, channel_id: int) -> None:
        super().__init__(discord.ui.Button(emoji="👍" if value == "good" else "👎",
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=rules.feedback_custom_id(value, channel_id)))
        self.value = value
        self.channel_id = channel_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any, /) -> FeedbackButton:
        return cls(match["value"], int(match["channel_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _handler(interaction).on_feedback(interaction, self.channel_id, self.value)


def view_for(buttons: rules.Buttons, run_id: str, channel_id: int) -> discord.ui.View | None:
    """The buttons of a message, None for none (an edit with `view=None` removes them)."""
    if buttons is rules.Buttons.NONE:
        return None
    view = discord.ui.View(timeout=None)
    if buttons is rules.Buttons.STOP:
        view.add_item(StopButton(run_id))
    else:
        view.add_item(FeedbackButton("good", channel_id))
        view.add_item(FeedbackButton("bad", channel_id))
    return view
