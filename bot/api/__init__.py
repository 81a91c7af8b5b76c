"""The socket API: :mod:`bot.api.server` (aiohttp, imported only by the service) and
:mod:`bot.api.schemas` (the wire models, shared with the agents' client).

Nothing is imported here, so ``import bot.api.schemas`` stays free of the
server's dependencies.
"""
