// The chat page: keeps the conversation, sends it to /v1/chat/completions with "stream": true
// and shows the answer token by token (fetch + ReadableStream over server-sent events).
"use strict";
const $ = (id) => document.getElementById(id);
const conversation = [];
let controller = null;

async function loadModel() {
  try {
    const r = await fetch("/v1/models");
    const info = (await r.json()).data[0];
    $("model-name").textContent = info.id;
    $("model-context").textContent = info.context_length;
    $("max_tokens").max = info.max_tokens;
  } catch (e) {
    $("model-name").textContent = "unavailable";
  }
}

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? "Model" : "Error";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("log").append(li);
  return body;
}

function settings() {
  const s = {
    temperature: Number($("temperature").value),
    max_tokens: Math.round(Number($("max_tokens").value)),
  };
  const p = Number($("top_p").value);
  if (p < 1) s.top_p = p;
  return s;
}

function messages() {
  const system = $("system").value.trim();
  return (system ? [{ role: "system", content: system }] : []).concat(conversation);
}

// Reads "data: ..." lines from the stream; calls onData with each parsed payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || controller) return;
  conversation.push({ role: "user", content: text });
  addTurn("user", text);
  $("message").value = "";
  const out = addTurn("assistant", "");
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "Generating…";
  let answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: messages(), stream: true, ...settings() }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    let finish = null;
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.delta.content) {
        answer += choice.delta.content;
        out.textContent = answer;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    $("status").textContent = finish === "length" ? "Stopped at max tokens." : "Done.";
  } catch (e) {
    if (e.name === "AbortError") {
      $("status").textContent = "Stopped.";
    } else {
      out.parentElement.className = "error";
      out.textContent = e.message;
      $("status").textContent = "Error.";
    }
  } finally {
    if (answer) conversation.push({ role: "assistant", content: answer });
    else if (conversation.length && conversation[conversation.length - 1].role === "user") {
      conversation.pop();  // nothing came back: drop the unanswered turn
    }
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("ask").addEventListener("submit", send);
$("message").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("ask").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  conversation.length = 0;
  $("log").replaceChildren();
  $("status").textContent = "";
});
loadModel();
