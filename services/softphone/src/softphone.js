// The Ringmesh browser softphone: JsSIP over secure WebSocket (RFC 7118),
// audio and video calls with WebRTC.
//
// It fills its form from `config.json` (served by `ringmesh dev` with the
// farm's domain and WebSocket URLs) and from the query string (`?node=1`
// picks a supernode, `user=` and `password=` fill the account, `auto=1`
// registers at once). `window.phone` is its state and controls, for a
// test driver or the console.

import JsSIP from 'jssip/lib/JsSIP.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const phone = {
  state: 'idle', // idle, registering, registered, calling, incoming, in-call, ended, failed
  error: null,
  ua: null,
  session: null,
  log: [],
  register,
  call,
  answer,
  hangup,
  stats,
};
window.phone = phone;

function note(line) {
  const at = new Date().toISOString().slice(11, 23);
  phone.log.push(`${at} ${line}`);
  $('log').textContent = phone.log.slice(-50).join('\n');
}

function setState(state, detail) {
  phone.state = state;
  $('status').textContent = detail ? `${state}: ${detail}` : state;
  const inCall = ['calling', 'incoming', 'in-call'].includes(state);
  $('call').disabled = !phone.ua || inCall;
  $('answer').disabled = state !== 'incoming';
  $('hangup').disabled = !inCall;
  note(detail ? `${state} (${detail})` : state);
}

async function loadConfig() {
  let config = {};
  try {
    const r = await fetch('config.json', { cache: 'no-store' });
    if (r.ok) config = await r.json();
  } catch (_) {
    // Served elsewhere: the form is filled by hand.
  }
  const node = Number(params.get('node') || 0);
  const servers = config.wss || [];
  $('server').value = params.get('server') || servers[node] || servers[0] || '';
  $('domain').value = params.get('domain') || config.domain || '';
  $('user').value = params.get('user') || '';
  $('password').value = params.get('password') || config.password || '';
  $('target').value = params.get('target') || '';
}

// What every call asks of WebRTC: no STUN or TURN server is needed on one
// machine or a LAN (host candidates); a carrier's page would add them.
const mediaOptions = {
  mediaConstraints: { audio: true, video: true },
  pcConfig: { iceServers: [] },
};

function register(event) {
  if (event) event.preventDefault();
  if (phone.ua) phone.ua.stop();
  const server = $('server').value.trim();
  const domain = $('domain').value.trim();
  const user = $('user').value.trim();
  const socket = new JsSIP.WebSocketInterface(server);
  const ua = new JsSIP.UA({
    sockets: [socket],
    uri: `sip:${user}@${domain}`,
    password: $('password').value,
    display_name: user,
    register: true,
    session_timers: false,
  });
  phone.ua = ua;
  ua.on('connected', () => note(`connected to ${server}`));
  ua.on('disconnected', () => note('disconnected'));
  ua.on('registered', () => setState('registered', `sip:${user}@${domain}`));
  ua.on('unregistered', () => setState('idle', 'unregistered'));
  ua.on('registrationFailed', (e) => {
    phone.error = e.cause;
    setState('failed', `registration: ${e.cause}`);
  });
  ua.on('newRTCSession', ({ session, originator }) => {
    if (phone.session && phone.session !== session) {
      session.terminate({ status_code: 486 });
      return;
    }
    follow(session);
    if (originator === 'remote') {
      setState('incoming', session.remote_identity.uri.toString());
    }
  });
  setState('registering', server);
  ua.start();
}

function follow(session) {
  phone.session = session;
  const attach = (pc) => {
    pc.addEventListener('track', (e) => {
      $('remote').srcObject = e.streams[0];
    });
  };
  if (session.connection) attach(session.connection);
  session.on('peerconnection', ({ peerconnection }) => attach(peerconnection));
  session.on('confirmed', () => {
    const local = session.connection.getSenders().map((s) => s.track).filter(Boolean);
    $('local').srcObject = new MediaStream(local);
    setState('in-call', session.remote_identity.uri.toString());
  });
  session.on('ended', (e) => {
    phone.session = null;
    setState('ended', `${e.originator}: ${e.cause}`);
  });
  session.on('failed', (e) => {
    phone.session = null;
    phone.error = e.cause;
    setState('failed', `${e.originator}: ${e.cause}`);
  });
}

function call(target) {
  const to = (target || $('target').value).trim();
  const uri = to.includes('@') ? `sip:${to}` : `sip:${to}@${$('domain').value.trim()}`;
  setState('calling', uri);
  phone.ua.call(uri, mediaOptions);
}

function answer() {
  if (phone.session) phone.session.answer(mediaOptions);
}

function hangup() {
  if (phone.session) phone.session.terminate();
}

// RTP counters of the call, from WebRTC's statistics: packets received and
// sent, by kind.
async function stats() {
  const pc = phone.session && phone.session.connection;
  const out = { audio: { received: 0, sent: 0 }, video: { received: 0, sent: 0 } };
  if (!pc) return out;
  const report = await pc.getStats();
  report.forEach((s) => {
    const kind = s.kind || s.mediaType;
    if (!out[kind]) return;
    if (s.type === 'inbound-rtp') out[kind].received += s.packetsReceived || 0;
    if (s.type === 'outbound-rtp') out[kind].sent += s.packetsSent || 0;
  });
  return out;
}

$('account').addEventListener('submit', register);
$('call').addEventListener('click', () => call());
$('answer').addEventListener('click', answer);
$('hangup').addEventListener('click', hangup);

loadConfig().then(() => {
  if (params.get('auto') === '1') register();
});
