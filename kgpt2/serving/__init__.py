"""The parts of the two apps that serve text to people and programs: the demo (`kgpt2.demo`: its page, answerer,
model pool, arena rules and votes) and the OpenAI-compatible API (`kgpt2.serve`: request bodies, answers, log lines).
"""
