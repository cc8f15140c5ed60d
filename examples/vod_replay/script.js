// The chat of a recorded stream, replayed in step with its media time (see main.py).
//
// The chat is read from GET {baseUrl}/history/{channel} a window of SEGMENT seconds at a time,
// following `next` from page to page: the window of the current media time and the ones on
// either side, so scrubbing or seeking anywhere reads only what is around it. The panel shows
// the messages whose `timestamp` is at most the current media time. The page also subscribes:
// its token lets it post at the current media time, and messages posted meanwhile arrive live.
'use strict';

const SEGMENT = 30; // seconds of chat read at a time
const SHOWN = 60; // the most messages the panel shows
const baseUrl = `${window.location.origin}${VOD.baseUrl}`;
const channel = VOD.channel;

const chat = document.getElementById('chat');
const statusLine = document.getElementById('status');
const timeLabel = document.getElementById('time');
const scrubber = document.getElementById('scrubber');
const playButton = document.getElementById('play');
const screen = document.getElementById('screen');

const messages = new Map(); // event id -> envelope, everything read or received so far
const windows = new Map(); // window number -> the promise of its reading
let ordered = []; // the messages by media time (ties: in the order they were published)
let shownKey = null;
let token = '';

const clock = (seconds) => {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, '0')}`;
};

// -- the media time: a <video>, or a scrubber that plays on its own ------------------------

// Without a video the media time is kept here: the scrubber's value snaps to its step.
let position = 0;
let now = () => position;

if (VOD.video) {
  const video = document.createElement('video');
  video.src = VOD.video;
  video.controls = true;
  video.preload = 'metadata';
  screen.append(video);
  playButton.hidden = true;
  scrubber.hidden = true;
  now = () => video.currentTime;
  video.addEventListener('timeupdate', () => onTime());
  video.addEventListener('seeked', () => onTime());
} else {
  scrubber.max = String(VOD.duration);
  let playing = false;
  let last = 0;
  const tick = (at) => {
    if (!playing) return;
    position = Math.min(VOD.duration, position + Math.max(0, at - last) / 1000);
    last = at;
    scrubber.value = String(position);
    onTime();
    if (position >= VOD.duration) {
      playing = false;
      playButton.textContent = 'Play';
    } else {
      requestAnimationFrame(tick);
    }
  };
  playButton.addEventListener('click', () => {
    playing = !playing;
    playButton.textContent = playing ? 'Pause' : 'Play';
    last = performance.now();
    if (playing) requestAnimationFrame(tick);
  });
  scrubber.addEventListener('input', () => {
    position = Number(scrubber.value);
    onTime();
  });
}

// -- reading the chat ---------------------------------------------------------------------

const add = (envelope) => {
  if (!envelope.id || !(envelope.timestamp > 0) || messages.has(envelope.id)) return false;
  messages.set(envelope.id, envelope);
  return true;
};

const reorder = () => {
  // A stable sort: messages of one media time stay in the order they were read, which is
  // the order /history gives (then the live ones, published later).
  ordered = [...messages.values()].sort((a, b) => a.timestamp - b.timestamp);
};

const readWindow = async (number) => {
  const from = number * SEGMENT;
  let after = null;
  do {
    const query = new URLSearchParams({ from, to: from + SEGMENT, limit: 200 });
    if (after) query.set('after', after);
    const reply = await fetch(`${baseUrl}/history/${channel}?${query}`);
    const page = await reply.json();
    if (page.code !== 200) throw new Error(page.message);
    page.events.forEach(add);
    after = page.next;
  } while (after);
  reorder();
  render();
};

const readAround = (seconds) => {
  const current = Math.floor(seconds / SEGMENT);
  for (const number of [current - 1, current, current + 1]) {
    if (number < 0 || number * SEGMENT > VOD.duration || windows.has(number)) continue;
    const reading = readWindow(number).catch((error) => {
      windows.delete(number); // read it again next time
      statusLine.textContent = `Could not read the chat: ${error.message}`;
    });
    windows.set(number, reading);
  }
};

// -- the panel ----------------------------------------------------------------------------

const line = (envelope) => {
  const item = document.createElement('li');
  item.dataset.id = envelope.id;
  item.dataset.timestamp = String(envelope.timestamp);
  const at = document.createElement('span');
  at.className = 'at';
  at.textContent = clock(envelope.timestamp);
  const message = envelope.message;
  const name = document.createElement('strong');
  name.textContent = message && message.name ? message.name : envelope.author_id.slice(0, 8);
  const text = message && typeof message.text === 'string' ? message.text : JSON.stringify(message);
  item.append(at, name, `: ${text}`);
  return item;
};

const render = () => {
  const seconds = now();
  const visible = ordered.filter((envelope) => envelope.timestamp <= seconds).slice(-SHOWN);
  const key = visible.map((envelope) => envelope.id).join(' ');
  if (key !== shownKey) {
    shownKey = key;
    chat.replaceChildren(...visible.map(line));
    chat.scrollTop = chat.scrollHeight;
  }
  statusLine.textContent = `${messages.size} messages read, ${visible.length} shown`;
};

function onTime() {
  const seconds = now();
  timeLabel.textContent = clock(seconds);
  if (!VOD.video) screen.textContent = clock(seconds);
  readAround(seconds);
  render();
}

// -- live: the token to post with, and messages posted meanwhile ---------------------------

const stream = new EventSource(`${baseUrl}/subscribe/${channel}`);
stream.addEventListener('message', (event) => {
  const envelope = JSON.parse(event.data);
  if (envelope.type === 'init') {
    token = envelope.message.token;
  } else if (envelope.type === 'broadcast' && add(envelope)) {
    reorder();
    render();
  }
});

document.getElementById('post').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = document.getElementById('text');
  const name = document.getElementById('name').value;
  // Media time 0 means "no media time" (not archived): post at 0.1 s at the earliest.
  const timestamp = Math.max(now(), 0.1);
  const reply = await fetch(`${baseUrl}/publish/${channel}?token=${token}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'broadcast', message: { name, text: text.value }, timestamp }),
  });
  const answer = await reply.json();
  if (answer.code === 200) {
    text.value = '';
  } else {
    statusLine.textContent = `Not sent: ${answer.message}`;
  }
});

onTime();
