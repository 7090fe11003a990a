"""The Python clients an Idefics2 user has, unchanged, against `idefics2 serve`.

Run by crates/idefics2-cli/tests/server.rs with a JSON file: the server's URL and, per case, the
prompt (markdown image), the question and image (OpenAI parts) and `idefics2 generate`'s greedy
answers. Exits non-zero on the first mismatch.
"""

import json
import sys

import openai
from text_generation import Client


def check(what, got, expected):
    if got != expected:
        sys.exit(f"FAIL {what}: got {got!r}, expected {expected!r}")
    print(f"ok   {what}")


def main():
    spec = json.load(open(sys.argv[1]))
    url = spec["url"]
    tgi = Client(url, timeout=60)
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for number, case in enumerate(spec["cases"]):
        # text_generation 0.7.0: Client.generate and generate_stream (both POST /).
        response = tgi.generate(case["prompt"], max_new_tokens=12)
        check(f"case {number}: text_generation generate text", response.generated_text, case["raw_text"])
        check(
            f"case {number}: text_generation generate ids",
            [t.id for t in response.details.tokens],
            case["raw_ids"],
        )
        events = list(tgi.generate_stream(case["prompt"], max_new_tokens=12))
        check(f"case {number}: text_generation stream ids", [e.token.id for e in events], case["raw_ids"])
        check(f"case {number}: text_generation stream text", events[-1].generated_text, case["raw_text"])

        # openai: chat with a data-URI image part, whole and streamed.
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": case["image"]}},
                    {"type": "text", "text": case["question"]},
                ],
            }
        ]
        chat = oai.chat.completions.create(model="idefics2", messages=messages, max_tokens=12, temperature=0)
        check(f"case {number}: openai chat", chat.choices[0].message.content, case["chat_text"])
        stream = oai.chat.completions.create(
            model="idefics2",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        check(f"case {number}: openai chat stream", text, case["chat_text"])
        check(f"case {number}: openai usage", chunks[-1].usage.completion_tokens, chat.usage.completion_tokens)

        # openai: raw completion with the markdown image.
        completion = oai.completions.create(model="idefics2", prompt=case["prompt"], max_tokens=12, temperature=0)
        check(f"case {number}: openai completion", completion.choices[0].text, case["raw_text"])

    # Errors reach the clients as their exceptions, with the server's message.
    from text_generation.errors import ValidationError

    try:
        tgi.generate("Hi", max_new_tokens=100000)
        sys.exit("FAIL: max_new_tokens=100000 was accepted")
    except ValidationError as error:
        check("text_generation validation error names the limit", "max_total_tokens" in str(error) or "<=" in str(error), True)
    try:
        oai.chat.completions.create(model="idefics2", messages=[], max_tokens=3)
        sys.exit("FAIL: empty messages were accepted")
    except openai.UnprocessableEntityError as error:
        check("openai validation error message", "messages" in str(error), True)
    print("python clients: all checks passed")


if __name__ == "__main__":
    main()
