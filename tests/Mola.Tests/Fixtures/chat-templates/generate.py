#!/usr/bin/python3
"""Renders real model chat templates with the real Jinja2 (Debian's python3-jinja2), configured as Hugging Face's
apply_chat_template configures it, and writes cases.json: the expected text (or the raise_exception message) that
JinjaTemplateTests compares our interpreter with.  Run: /usr/bin/python3 generate.py (from this directory)."""
import json
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Copied from each model's tokenizer_config.json on the Hugging Face hub.
TEMPLATES = {
    "llama-2-chat": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "mistral-instruct-v0.1": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "mistral-instruct-v0.2": "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n",
    "gemma-it": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # Not a model's: the rest of the subset (~, |length, loop.*, elif, slicing, tests, in, x if c else y, comments,
    # arithmetic, string methods, indented blocks that lstrip_blocks/trim_blocks clean up, scoping of set in a loop).
    "subset": "{# a comment #}\n{% set n = messages | length %}\n{% set greeting = 'Conversation of ' ~ n ~ ' message' ~ ('s' if n != 1 else '') %}\n{{ greeting }}\n{% for m in messages %}\n    {% set turn = loop.index %}\n    [{{ turn }}/{{ loop.length }}{{ ' first' if loop.first }}{{ ' last' if loop.last }}] {{ m.role.upper() }}: {{ m['content'].rstrip() }}\n    {% if m.content.startswith('  ') %}(indented){% elif 'x' in m.content %}(has x){% else %}(plain){% endif %}\n\n{% endfor %}\n{{- 'turn' is defined }} {{ turn is defined }} {{ messages[-1]['role'] }} {{ messages[1:] | length }} {{ (n * 3 + 1) % 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 / 2 }} {{ n > 1 and n <= 3 }} {{ none is none }} {{ 'abc'[1:] }} {{ messages[0]['missing'] is not defined }}\n{%- if add_generation_prompt %}\n  {{ '\\n>>> ' -}}\n{% endif %}",
}

MESSAGES = {
    "user": [{"role": "user", "content": "What is 2 + 2?"}],
    "system-user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    "multi-turn": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke."}],
    "system-multi-turn": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "  padded question  \n"},
                          {"role": "assistant", "content": " an answer with x "}, {"role": "user", "content": "Héllo {x} 🙂"}],
    "two-users": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
}

TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


def raise_exception(message):
    raise TemplateError(message)


env.globals["raise_exception"] = raise_exception
cases = []
for name, source in TEMPLATES.items():
    template = env.from_string(source)
    for messages_name, messages in MESSAGES.items():
        for add_generation_prompt in (True, False):
            case = {"template": name, "messages": messages_name, "add_generation_prompt": add_generation_prompt}
            try:
                case["expected"] = template.render(messages=messages, add_generation_prompt=add_generation_prompt, **TOKENS)
            except TemplateError as e:
                case["error"] = e.message
            cases.append(case)

with open("cases.json", "w", encoding="utf-8") as f:
    json.dump({"tokens": TOKENS, "templates": TEMPLATES, "messages": MESSAGES, "cases": cases}, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"{len(cases)} cases, {sum('error' in c for c in cases)} raise_exception")
