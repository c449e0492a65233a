"""The Alpaca instruction template, shared by training, generation and the demo.

    >>> from kgpt2.instructions import format_prompt
    >>> print(format_prompt("Name a colour.", ""))
    ### Instruction:
    Name a colour.
    <BLANKLINE>
    ### Response:
    <BLANKLINE>
"""

INSTRUCTION = "### Instruction:\n"
INPUT = "### Input:\n"
RESPONSE = "### Response:\n"


def format_prompt(instruction: str, input_text: str = "") -> str:
    """Everything before the response; the Input block is omitted when empty."""
    text = INSTRUCTION + instruction.strip() + "\n\n"
    if input_text and input_text.strip():
        text += INPUT + input_text.strip() + "\n\n"
    return text + RESPONSE
