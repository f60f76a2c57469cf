"""The turn flow, one room per part of a turn (docs/architecture.md walks a message through them).

handler.py    where a turn starts: chat commands, buttons, a message becoming a stored turn
requests.py   where it continues from (>N, a reply, the thread's head, /undo) and what the
              user sent to draw (canvas code, a .py file, one of our PNGs)
settings.py   typed turn settings: defaults < chat < user < message, validated once
runner.py     where it is drawn: compose, layout preview, render, through the engine
live.py       the one object holding a turn in flight
status.py     its status message, and the bot's one edit-pacing mechanism
results.py    where its result is posted: the layout preview, the picture, the summary
errors.py     UserError: a request that cannot go on, with its reply
"""
