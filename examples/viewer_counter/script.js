// inLive's viewer counter: the init event says how many viewers the stream has (this page
// included), and every system event (a viewer joined or left, or a periodic count on a large
// stream) carries the new number. baseUrl is the channel routes of this page's own server, or
// those named by ?channel=<url> (the page may live on another origin).
const streamId = 15;
const baseUrl = new URLSearchParams(window.location.search).get('channel') || window.location.origin;
const subscribeUrl = `${baseUrl}/subscribe/${streamId}`;
const eventSource = new EventSource(subscribeUrl);

const viewersElement = document.getElementById('viewers');

const showViewerCount = (viewerCount) => {
 if (typeof viewerCount === 'number' && viewersElement) {
   viewersElement.textContent = `${viewerCount}`;
 }
}

eventSource.addEventListener('message', (event) => {
 if (event?.data) {
   const data = JSON.parse(event.data);
   const messageData = data.message;

   if (data.type === 'init') {
     showViewerCount(messageData?.viewer_count);

   } else if (data.type === 'system' && messageData) {
     const { status, viewer_count } = messageData;

     if (status === 'join' || status === 'leave' || status === 'count') {
       showViewerCount(viewer_count);
     }
   }
 }
});

eventSource.addEventListener('error', (event) => {
 if (eventSource.readyState === EventSource.CLOSED) {
   console.log('Connection was closed');
 }
 console.log(event);
});
