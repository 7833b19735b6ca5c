// The login form: POST /api/login, then the review page.
import { api } from './api.js';

const form = document.getElementById('login');
const error = document.getElementById('error');
form.addEventListener('submit', async (e) => {
  e.preventDefault();
  error.hidden = true;
  try {
    await api('POST', '/api/login', {
      username: document.getElementById('username').value,
      password: document.getElementById('password').value,
    });
    location.assign('/');
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    document.getElementById('password').select();
  }
});
