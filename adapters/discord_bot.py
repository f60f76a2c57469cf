"""Discord, through discord.py 2.x with application (slash) commands and persistent buttons.

It translates, nothing more: Discord events become `Incoming`/`ButtonPress` for the bot's
`Handler`, and the bot's `Post`s become Discord messages. It owns Discord's limits: 2000
characters of content, 4096 of embed description, the 10 MiB file limit (a PNG too large is sent
as JPEG), how often a message may be edited (`edit_interval`; the bot paces its edits to it), and
mentions (allowed_mentions is empty on every message: the bot never
pings anyone from user or model text).

Where a conversation lives (the store keys conversations by (platform, chat, thread) and message
links by (platform, chat, message id)):
- a guild text channel: chat = the channel id, thread = "";
- a thread (the bot opens one per /omost or mention where it may): chat = the thread's parent
  channel id, thread = the thread id, so every message of a thread conversation shares the
  parent's chat key and replies resolve however the message was reached;
- a DM: chat = the DM channel id, thread = "" (the DM is the thread).

Interactions are acknowledged at once (a short response; the quick commands answer in it), and
everything after that travels as ordinary channel messages: an interaction token dies after 15
minutes and a queue can outlive it. Buttons carry `omost:<action>:<turn id>` in their custom_id
and are matched by a `DynamicItem` template, so a button pressed after a restart still works.

Errors: discord.py retries rate limits (429, honouring retry_after) and 5xx itself; every send
carries a nonce Discord enforces, so a retried send never posts twice. Missing permissions
(threads, attachments) degrade to the channel or to text, with a note for the server admin in the
log. Every unexpected error goes through one handler, `_on_error`.

Never imports torch, the engine or the bot package (DESIGN.md's one-way rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import re
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import discord
from discord import app_commands

from adapters.base import (
    BUTTON_ACTIONS,
    BUTTON_PATTERN,
    Attachment,
    BoundedMap,
    Button,
    ButtonPress,
    Handler,
    Incoming,
    MessageRef,
    OutFile,
    PlatformStartError,
    Post,
    clipped,
    encode_button,
)

log = logging.getLogger(__name__)

PLATFORM = "discord"
CONTENT_LIMIT = 2000
EMBED_LIMIT = 4096
FILE_LIMIT = 10 * 1024 * 1024  # Discord's default upload limit per file
ATTACHMENT_FETCH_LIMIT = 10 * 1024 * 1024
ACK_WITHIN_S = 2.0  # quick commands answer in the interaction response when the bot is this fast
EDIT_INTERVAL_S = 1.0
THREAD_NAME_LIMIT = 100
ERROR_TEXT = "Sorry, something went wrong with that. The bot's admin can find it in the log."
NO_FILES_NOTE = "(I may not attach files here: a server admin can grant me Attach Files.)"
NO_MENTIONS = discord.AllowedMentions.none()
ASPECTS = {
    "square": "1024x1024",
    "portrait": "896x1152",
    "landscape": "1152x896",
    "wide": "1344x768",
    "tall": "768x1344",
}
QUICK_COMMANDS = {
    "new": "Start a new conversation here",
    "cancel": "Cancel your latest queued or running picture",
    "help": "How to use the bot",
}
BUTTON_STYLES = {
    "seed": discord.ButtonStyle.primary,
    "rewrite": discord.ButtonStyle.secondary,
    "hires": discord.ButtonStyle.secondary,
    "retry": discord.ButtonStyle.primary,
    "cancel": discord.ButtonStyle.danger,
}


def _nonce() -> str:
    # Discord dedupes message creation by nonce (enforce_nonce): a send retried after a 5xx
    # that had in fact gone through returns the first message instead of posting twice
    return str(random.getrandbits(62))


def fit_image(file: OutFile, limit: int = FILE_LIMIT) -> OutFile:
    """The image as it may be uploaded: as is when it fits, else as JPEG (smaller each try)."""
    if len(file.data) <= limit:
        return file
    from PIL import Image  # only needed for the rare oversized image

    with Image.open(io.BytesIO(file.data)) as opened:
        image = opened.convert("RGB")
    stem = file.filename.rsplit(".", 1)[0]
    for quality, scale in ((92, 1.0), (85, 1.0), (80, 0.75), (75, 0.5), (70, 0.35)):
        frame = (
            image
            if scale == 1.0
            else image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
        )
        buffer = io.BytesIO()
        frame.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= limit:
            return OutFile(f"{stem}.jpg", buffer.getvalue(), "image/jpeg")
    raise ValueError(f"{file.filename} does not fit in {limit} bytes even as a small JPEG")


@dataclass
class _Ack:
    """An interaction not yet answered: the first reply the bot makes to it becomes its response."""

    interaction: discord.Interaction[Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ActionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=BUTTON_PATTERN):
    """A result's button; rebuilt from its custom_id alone, so it works after a restart."""

    def __init__(self, action: str, turn_id: int) -> None:
        label = Button(action, turn_id).label if action in BUTTON_ACTIONS else action
        super().__init__(
            discord.ui.Button(
                label=label,
                style=BUTTON_STYLES.get(action, discord.ButtonStyle.secondary),
                custom_id=encode_button(Button(action, turn_id)) if action in BUTTON_ACTIONS else action,
            )
        )
        self.action = action
        self.turn_id = turn_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionButton:
        return cls(match["action"], int(match["turn"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client = interaction.client
        if isinstance(client, _OmostClient):
            await client.adapter.on_button(interaction, self.action, self.turn_id)


class _OmostClient(discord.Client):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self.adapter = adapter

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_discord_message(message)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            await self.adapter._on_error(error, f"event {event_method}")


class DiscordAdapter:
    platform = PLATFORM

    def __init__(
        self,
        token: str,
        *,
        guild_ids: Sequence[int] = (),
        create_threads: bool = True,
        guild_ready_timeout: float = 2.0,
        edit_interval: float = EDIT_INTERVAL_S,
        ready_timeout: float = 60.0,
    ) -> None:
        self.token = token
        self.guild_ids = list(guild_ids)
        self.create_threads = create_threads
        self.guild_ready_timeout = guild_ready_timeout
        self.min_edit_interval = edit_interval  # seconds between edits of one message
        self.ready_timeout = ready_timeout
        self.client: _OmostClient | None = None
        self._handler: Handler | None = None
        self._runner: asyncio.Task[None] | None = None
        self._acks: dict[str, _Ack] = {}  # interaction id -> the quick command it waits to answer
        self._channel_of: BoundedMap[str, str] = BoundedMap(10000)  # message id -> its channel id
        self._seen: BoundedMap[str, None] = BoundedMap(10000)  # events handled (replays are ignored)
        self._thread_parent: dict[int, int] = {}
        self._our_threads: set[int] = set()  # threads the bot opened, for when one is not cached
        self._tasks: set[asyncio.Task[Any]] = set()

    def edit_interval(self, chat: str) -> float:
        return self.min_edit_interval

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        intents = discord.Intents.default()
        intents.message_content = True  # a privileged intent: enable it in the developer portal
        client = _OmostClient(
            self,
            intents=intents,
            allowed_mentions=NO_MENTIONS,
            guild_ready_timeout=self.guild_ready_timeout,
        )
        tree = app_commands.CommandTree(client)
        tree.on_error = self._on_tree_error  # type: ignore[method-assign]
        self._add_commands(tree)
        client.add_dynamic_items(ActionButton)
        self.client = client
        await client.login(self.token)
        await self._sync(tree)
        self._runner = asyncio.create_task(client.connect(reconnect=True))
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, self._runner}, timeout=self.ready_timeout, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            ready.cancel()
            if self._runner in done:
                self._runner.result()  # the connection's own error (a bad token, no gateway)
            took = f"Discord did not become ready within {self.ready_timeout:g} s"
            raise PlatformStartError(PLATFORM, took)

    async def _sync(self, tree: app_commands.CommandTree[Any]) -> None:
        if self.guild_ids:
            for guild_id in self.guild_ids:
                guild = discord.Object(id=guild_id)
                tree.copy_global_to(guild=guild)
                await tree.sync(guild=guild)
        else:
            await tree.sync()  # global commands can take up to an hour to appear

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._runner
        self.client = None
        self._runner = None

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- slash commands --------------------------------------------------------------------------

    def _add_commands(self, tree: app_commands.CommandTree[Any]) -> None:
        tree.add_command(self._omost_command())
        tree.add_command(self._settings_command())
        for name, description in QUICK_COMMANDS.items():
            tree.add_command(self._quick_command(name, description))

    def _quick_command(self, name: str, description: str) -> app_commands.Command[Any, Any, None]:
        adapter = self

        async def quick(interaction: discord.Interaction[Any]) -> None:
            await adapter._quick(interaction, name)

        return app_commands.Command(name=name, description=description, callback=quick)

    def _omost_command(self) -> app_commands.Command[Any, Any, None]:
        adapter = self

        @app_commands.command(name="omost", description="Compose and draw a picture from a description")
        @app_commands.describe(
            prompt="What to draw",
            seed="A fixed seed (same seed, same picture)",
            aspect="The picture's shape",
            size="An exact size, e.g. 1024x1024 (overrides aspect)",
            steps="Denoising steps",
            hires="Upscale factor for a second, sharper pass (1.0 = off)",
        )
        @app_commands.choices(aspect=[app_commands.Choice(name=k, value=v) for k, v in ASPECTS.items()])
        async def omost(
            interaction: discord.Interaction[Any],
            prompt: str,
            seed: app_commands.Range[int, 0, 2**31 - 1] | None = None,
            aspect: app_commands.Choice[str] | None = None,
            size: str | None = None,
            steps: app_commands.Range[int, 1, 150] | None = None,
            hires: app_commands.Range[float, 1.0, 2.0] | None = None,
        ) -> None:
            options = {k: str(v) for k, v in (("seed", seed), ("steps", steps)) if v is not None}
            if size or aspect is not None:
                options["size"] = size or (aspect.value if aspect is not None else "")
            if hires is not None:
                options["hires"] = f"{hires:g}"
            await adapter._omost(interaction, prompt, options)

        return omost

    def _settings_command(self) -> app_commands.Command[Any, Any, None]:
        adapter = self

        @app_commands.command(name="settings", description="Show or change your default picture settings")
        @app_commands.describe(
            size="e.g. 1024x1024",
            steps="Denoising steps",
            seed="A number, or 'random'",
            hires="1.0-2.0, or 'off'",
            png="Also send the lossless PNG",
        )
        async def settings(
            interaction: discord.Interaction[Any],
            size: str | None = None,
            steps: app_commands.Range[int, 1, 150] | None = None,
            seed: str | None = None,
            hires: str | None = None,
            png: bool | None = None,
        ) -> None:
            options = {
                k: str(v)
                for k, v in (("size", size), ("steps", steps), ("seed", seed), ("hires", hires))
                if v is not None
            }
            if png is not None:
                options["png"] = "on" if png else "off"
            await adapter._quick(interaction, "settings", options)

        return settings

    async def _omost(
        self, interaction: discord.Interaction[Any], prompt: str, options: dict[str, str]
    ) -> None:
        """/omost: answer at once with the request, open a thread on that answer where allowed,
        then hand the request to the bot. Everything after this goes to the channel or thread."""
        name = interaction.user.display_name
        callback = await interaction.response.send_message(
            clipped(f"**{name}**: {prompt}", CONTENT_LIMIT), allowed_mentions=NO_MENTIONS
        )
        response_id = callback.message_id or interaction.id
        chat, thread = await self._place(interaction.channel, interaction.channel_id)
        self._channel_of[str(response_id)] = chat
        if not thread and interaction.guild_id is not None:
            thread = await self._open_thread(
                interaction.channel, response_id, prompt, interaction.app_permissions
            )
        await self._deliver(
            Incoming(
                platform=PLATFORM,
                chat=chat,
                thread=thread,
                message_id=str(response_id),
                user=str(interaction.user.id),
                user_name=name,
                text=prompt,
                command="omost",
                options=options,
                private=interaction.guild_id is None,
                roles=_roles(interaction.user),
                guild=_guild(interaction.guild_id),
            ),
            interaction=interaction,
        )

    async def _quick(
        self, interaction: discord.Interaction[Any], command: str, options: Mapping[str, str] | None = None
    ) -> None:
        """A command the bot answers at once: its reply becomes the interaction's response; if the
        bot is slow, a short acknowledgement goes first and the answer follows as a message."""
        chat, thread = await self._place(interaction.channel, interaction.channel_id)
        key = str(interaction.id)
        ack = _Ack(interaction)
        self._acks[key] = ack
        message = Incoming(
            platform=PLATFORM,
            chat=chat,
            thread=thread,
            message_id="",  # a slash command is no message: its answer is the interaction's
            user=str(interaction.user.id),
            user_name=interaction.user.display_name,
            text="",
            command=command,
            options=dict(options or {}),
            answer_in_place=key,
            private=interaction.guild_id is None,
            roles=_roles(interaction.user),
            guild=_guild(interaction.guild_id),
        )
        task = self._spawn(self._deliver(message, interaction=interaction))
        try:
            await asyncio.wait({task}, timeout=ACK_WITHIN_S)
            async with ack.lock:
                if not interaction.response.is_done():
                    await interaction.response.send_message("Working on it…", allowed_mentions=NO_MENTIONS)
        finally:
            self._acks.pop(key, None)

    async def _deliver(
        self,
        message: Incoming,
        *,
        interaction: discord.Interaction[Any] | None = None,
        author: discord.User | discord.Member | None = None,
    ) -> None:
        """Hand a message to the bot; its failure goes to `_on_error`, which tells the user
        privately (over the interaction, or in a DM to the author)."""
        if self._handler is None:
            return
        try:
            await self._handler.on_message(self, message)
        except Exception as e:
            await self._on_error(e, f"message {message.message_id}", interaction, author)

    # --- buttons ---------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: str, turn_id: int) -> None:
        # acknowledge without changing the message; the bot's answer comes as channel messages
        with contextlib.suppress(discord.HTTPException):
            await interaction.response.defer()
        if not self._seen.first_time(f"interaction-{interaction.id}", None) or self._handler is None:
            return
        chat, thread = await self._place(interaction.channel, interaction.channel_id)
        press = ButtonPress(
            platform=PLATFORM,
            chat=chat,
            thread=thread,
            user=str(interaction.user.id),
            user_name=interaction.user.display_name,
            action=action,
            turn_id=turn_id,
            message_id=str(interaction.message.id) if interaction.message else "",
            roles=_roles(interaction.user),
            guild=_guild(interaction.guild_id),
        )
        try:
            answer = await self._handler.on_button(self, press)
            if answer:
                await self._tell_interaction(interaction, answer)  # for the presser alone
        except Exception as e:
            await self._on_error(e, f"button {action}:{turn_id}", interaction)

    # --- messages --------------------------------------------------------------------------------

    async def on_discord_message(self, message: discord.Message) -> None:
        client = self.client
        if client is None or client.user is None or message.author.bot:
            return
        if not self._seen.first_time(f"message-{message.id}", None):
            return  # a replayed event: already handled
        me = client.user
        chat, thread = await self._place(message.channel, message.channel.id)
        self._channel_of[str(message.id)] = str(message.channel.id)
        private = message.guild is None
        mentioned = me in message.mentions
        reply_to: str | None = None
        replied_to_bot = False
        if message.reference is not None and message.reference.message_id is not None:
            reply_to = str(message.reference.message_id)
            resolved = message.reference.resolved
            replied_to_bot = isinstance(resolved, discord.Message) and resolved.author.id == me.id
        in_our_thread = (
            message.channel.owner_id == me.id
            if isinstance(message.channel, discord.Thread)
            else message.channel.id in self._our_threads  # not cached: _place fetched it
        )
        if not (private or mentioned or replied_to_bot or in_our_thread):
            return  # guild chatter not meant for the bot
        text = re.sub(rf"<@!?{me.id}>", "", message.content).strip()
        if mentioned and not thread and not private and not replied_to_bot:
            # a mention in a channel works like /omost: a thread on the user's message
            permissions = (
                message.channel.permissions_for(message.guild.me)
                if isinstance(message.channel, discord.TextChannel) and message.guild is not None
                else None
            )
            thread = await self._open_thread(message.channel, message.id, text, permissions)
        attachments = await self._fetch_attachments(message.attachments)
        if await self._skipped_large_files(message, chat, thread) and not text and not attachments:
            return  # nothing else in the message: the note is the whole answer
        await self._deliver(
            Incoming(
                platform=PLATFORM,
                chat=chat,
                thread=thread,
                message_id=str(message.id),
                user=str(message.author.id),
                user_name=message.author.display_name,
                text=text,
                reply_to=reply_to,
                attachments=attachments,
                private=private,
                roles=_roles(message.author),
                guild=_guild(message.guild.id if message.guild is not None else None),
            ),
            author=message.author,
        )

    async def _skipped_large_files(self, message: discord.Message, chat: str, thread: str) -> bool:
        """Tell the user which files were too large to read; True when there were any."""
        too_large = [a.filename for a in message.attachments if a.size > ATTACHMENT_FETCH_LIMIT]
        if too_large:
            note = (
                f"I skipped {', '.join(too_large)}: I read files up to {ATTACHMENT_FETCH_LIMIT // 2**20} MiB."
            )
            await self.send(chat, thread, Post(text=clipped(note, CONTENT_LIMIT), reply_to=str(message.id)))
        return bool(too_large)

    async def _fetch_attachments(self, attachments: Sequence[discord.Attachment]) -> tuple[Attachment, ...]:
        out = []
        for attachment in attachments:
            name = attachment.filename.lower()
            if not name.endswith((".py", ".txt", ".png")) or attachment.size > ATTACHMENT_FETCH_LIMIT:
                continue  # only canvas code and the bot's own PNGs mean anything to the bot
            try:
                data = await attachment.read()
            except discord.HTTPException as e:
                log.warning("could not download attachment %s: %s", attachment.filename, e)
                continue
            out.append(
                Attachment(attachment.filename, data, attachment.content_type or "application/octet-stream")
            )
        return tuple(out)

    # --- where things live -----------------------------------------------------------------------

    async def _place(self, channel: Any, channel_id: int | None) -> tuple[str, str]:
        """(chat, thread) for a channel: a thread maps to (its parent, itself)."""
        if isinstance(channel, discord.Thread):
            if channel.parent_id:
                self._thread_parent[channel.id] = channel.parent_id
            return str(channel.parent_id), str(channel.id)
        cid = channel.id if channel is not None else channel_id
        if cid is None:
            return "", ""
        if cid in self._thread_parent:
            return str(self._thread_parent[cid]), str(cid)
        if isinstance(channel, discord.abc.GuildChannel | discord.DMChannel | discord.GroupChannel):
            return str(cid), ""
        # a channel not in the cache (a partial one): ask Discord whether it is a thread
        if self.client is not None and getattr(channel, "guild", None) is not None:
            try:
                fetched = await self.client.fetch_channel(cid)
            except discord.HTTPException:
                return str(cid), ""
            if isinstance(fetched, discord.Thread) and fetched.parent_id:
                self._thread_parent[cid] = fetched.parent_id
                if self.client.user is not None and fetched.owner_id == self.client.user.id:
                    self._our_threads.add(cid)
                return str(fetched.parent_id), str(cid)
        return str(cid), ""

    async def _open_thread(
        self, channel: Any, message_id: int, title: str, permissions: discord.Permissions | None
    ) -> str:
        """A thread on `message_id` when the config and the bot's permissions allow; else ""."""
        if not self.create_threads or not isinstance(channel, discord.TextChannel):
            return ""
        if permissions is not None and not (
            permissions.create_public_threads and permissions.send_messages_in_threads
        ):
            log.warning(
                "Discord: no permission to create threads in #%s (%s); answering in the channel. "
                "A server admin can grant Create Public Threads and Send Messages in Threads.",
                channel.name,
                channel.id,
            )
            return ""
        name = clipped(" ".join(title.split()) or "Omost", THREAD_NAME_LIMIT)
        try:
            created = await channel.get_partial_message(message_id).create_thread(
                name=name, auto_archive_duration=1440
            )
        except discord.Forbidden:
            log.warning(
                "Discord: creating a thread in #%s (%s) was refused; answering in the channel. "
                "A server admin can grant Create Public Threads.",
                channel.name,
                channel.id,
            )
            return ""
        except discord.HTTPException as e:
            log.warning(
                "Discord: could not create a thread in %s (%s); answering in the channel", channel.id, e
            )
            return ""
        self._thread_parent[created.id] = channel.id
        self._our_threads.add(created.id)
        return str(created.id)

    def _cached_permissions(self, channel_id: int) -> discord.Permissions | None:
        """The bot's permissions in a guild channel or thread discord.py has cached; else None."""
        channel = self.client.get_channel(channel_id) if self.client is not None else None
        if isinstance(channel, discord.TextChannel | discord.Thread) and channel.guild.me is not None:
            return channel.permissions_for(channel.guild.me)
        return None

    def _note_admin(self, channel_id: str, permission: str, what: str) -> None:
        """The server admin's note in the log, once per channel and permission."""
        if self._seen.first_time(f"refused-{channel_id}-{permission}", None):
            log.warning(
                "Discord: channel %s refuses the bot's %s; sending without them. "
                "A server admin can grant the bot %s there.",
                channel_id,
                what,
                permission,
            )

    # --- the port: sending -----------------------------------------------------------------------

    async def send(self, chat: str, thread: str, post: Post) -> list[MessageRef]:
        ack = self._acks.get(post.in_place)
        if ack is not None and post.image is None and not post.files:
            async with ack.lock:
                if not ack.interaction.response.is_done():
                    return [await self._respond(ack.interaction, chat, thread, post)]
        client = self._require_client()
        target = thread or chat
        channel = client.get_partial_messageable(int(target))
        # the richest form the channel allows: "full" (the image in an embed), "plain" (the image
        # as a bare attachment), "text" (no files; a note says why). The cached permissions pick
        # the form up front (repeated 403s count against Discord's invalid-request limit); a 403
        # the cache did not foresee steps down one form at a time.
        level = "full"
        allowed = self._cached_permissions(int(target))
        if allowed is not None and not allowed.attach_files and (post.image or post.files):
            self._note_admin(target, "Attach Files", "files")
            level = "text"
        elif allowed is not None and not allowed.embed_links and post.image and post.role == "image":
            self._note_admin(target, "Embed Links", "embeds")
            level = "plain"
        while True:
            kwargs = self._message_kwargs(post, target, level)
            try:
                message = await channel.send(nonce=_nonce(), **kwargs)
                break
            except discord.Forbidden as e:
                if level == "full" and "embed" in kwargs:
                    self._note_admin(target, "Embed Links", f"embeds ({e.text})")
                    level = "plain"
                elif level != "text" and kwargs["files"]:
                    self._note_admin(target, "Attach Files", f"files ({e.text})")
                    level = "text"
                else:
                    raise  # not a refused embed or file: nothing left to leave out
        self._channel_of[str(message.id)] = target
        return [MessageRef(PLATFORM, chat, str(message.id), thread)]

    async def _respond(
        self, interaction: discord.Interaction[Any], chat: str, thread: str, post: Post
    ) -> MessageRef:
        view = _view(post.buttons)
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        callback = await interaction.response.send_message(
            clipped(post.text, CONTENT_LIMIT) or "…", allowed_mentions=NO_MENTIONS, **extra
        )
        message_id = str(callback.message_id or interaction.id)
        self._channel_of[message_id] = str(interaction.channel_id)
        return MessageRef(PLATFORM, chat, message_id, thread)

    def _message_kwargs(self, post: Post, target: str, level: str = "full") -> dict[str, Any]:
        """send()'s arguments for `post` at a level: "full" (the image in an embed), "plain" (no
        embed) or "text" (no files either: a note tells the user why)."""
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
        files: list[discord.File] = []
        notes: list[str] = []
        embed: discord.Embed | None = None
        content = post.text
        if level == "text" and (post.image is not None or post.files):
            notes.append(NO_FILES_NOTE)
        elif post.image is not None:
            image = fit_image(post.image)
            files.append(discord.File(io.BytesIO(image.data), filename=image.filename))
            if post.role == "image" and level == "full":
                embed = discord.Embed(description=clipped(post.text, EMBED_LIMIT))
                if post.turn_id is not None:
                    embed.title = f"Turn {post.turn_id}"
                embed.set_image(url=f"attachment://{image.filename}")
                content = ""
        for extra in post.files if level != "text" else ():
            if (
                post.image is not None
                and extra.data == post.image.data
                and extra.filename == post.image.filename
            ):
                continue
            if len(extra.data) > FILE_LIMIT:
                notes.append(f"({extra.filename} is larger than Discord's {FILE_LIMIT // 2**20} MiB limit.)")
                continue
            files.append(discord.File(io.BytesIO(extra.data), filename=extra.filename))
        if notes:
            tail = "\n" + "\n".join(notes)
            content = (clipped(content, CONTENT_LIMIT - len(tail)) + tail).strip()
        kwargs["content"] = clipped(content, CONTENT_LIMIT) or None
        if embed is not None:
            kwargs["embed"] = embed
        view = _view(post.buttons)
        if view is not None:
            kwargs["view"] = view
        if post.reply_to and self._channel_of.get(post.reply_to) == target:
            # a reply only within one channel: a thread's messages can't reply across to its parent
            kwargs["reference"] = discord.MessageReference(
                message_id=int(post.reply_to), channel_id=int(target), fail_if_not_exists=False
            )
        kwargs["files"] = files
        return kwargs

    # --- the port: editing -----------------------------------------------------------------------

    async def edit(self, ref: MessageRef, post: Post) -> MessageRef:
        """Edit now (the bot paces its edits to `edit_interval`); a message that can no longer be
        edited is replaced by a new one, whose ref is returned."""
        return await self._edit_now(ref, post)

    async def _edit_now(self, ref: MessageRef, post: Post) -> MessageRef:
        client = self._require_client()
        target = ref.thread or ref.chat
        partial = client.get_partial_messageable(int(target)).get_partial_message(int(ref.message_id))
        kwargs = self._message_kwargs(replace_reply(post), target)
        files = kwargs.pop("files")
        kwargs.pop("reference", None)
        kwargs["view"] = kwargs.get("view")  # None clears buttons the message no longer has
        kwargs["embed"] = kwargs.get("embed")
        if files:
            kwargs["attachments"] = files
        try:
            await partial.edit(**kwargs)
        except (discord.NotFound, discord.Forbidden) as e:
            # deleted, or not editable any more: post the state as a new message instead
            log.info("Discord: message %s could not be edited (%s); sending a new one", ref.message_id, e)
            return (await self.send(ref.chat, ref.thread, replace_reply(post)))[0]
        return ref

    def _require_client(self) -> discord.Client:
        if self.client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self.client

    # --- errors ----------------------------------------------------------------------------------

    async def _on_tree_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        await self._on_error(
            getattr(error, "original", error),
            f"/{interaction.command.name if interaction.command else '?'}",
            interaction,
        )

    async def _on_error(
        self,
        error: BaseException,
        where: str,
        interaction: discord.Interaction[Any] | None = None,
        user: discord.User | discord.Member | None = None,
    ) -> None:
        """The one error handler: log it once (with a note for the admin when it is a permission),
        and tell the user briefly and privately: an ephemeral answer to their interaction, else a
        DM. Telling them is best effort: it never raises."""
        if isinstance(error, discord.Forbidden):
            log.warning(
                "Discord: missing permissions in %s (%s). A server admin can grant the bot: View Channel, "
                "Send Messages, Send Messages in Threads, Create Public Threads, Attach Files, Embed Links, "
                "Read Message History.",
                where,
                error.text,
            )
        else:
            log.error("Discord: error in %s", where, exc_info=error)
        with contextlib.suppress(discord.HTTPException):
            if interaction is not None:
                await self._tell_interaction(interaction, ERROR_TEXT)
            elif user is not None:
                await user.send(ERROR_TEXT, allowed_mentions=NO_MENTIONS)

    @staticmethod
    async def _tell_interaction(interaction: discord.Interaction[Any], text: str) -> None:
        """An ephemeral message: the interaction's response while it has none, else a followup."""
        if not interaction.response.is_done():
            with contextlib.suppress(discord.InteractionResponded):  # answered meanwhile
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
                return
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


def replace_reply(post: Post) -> Post:
    """The post without its reply target (an edit or a resend never re-points a reply)."""
    return replace(post, reply_to=None)


def _view(buttons: Sequence[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for button in buttons:
        view.add_item(ActionButton(button.action, button.turn_id))
    return view


def _guild(guild_id: int | None) -> str:
    """The guild id as the port carries it ("" in DMs), so [access] lists can name a whole server."""
    return str(guild_id) if guild_id is not None else ""


def _roles(user: discord.abc.User | discord.Member) -> tuple[str, ...]:
    if isinstance(user, discord.Member):
        return tuple(str(role.id) for role in user.roles if not role.is_default())
    return ()


__all__ = ["ActionButton", "DiscordAdapter", "fit_image"]
