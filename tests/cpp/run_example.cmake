# ctest's run of examples/cpp (lstm_stream) on a small exported model, so
# that the C++ example runs under the sanitizers (LSTM_EXT_SANITIZE) and
# valgrind too. Its numbers are checked against nn.LSTM by
# tests/test_model_export.py; here: the exit status and the output's shape,
# and the two ways it refuses (a missing file, an input ending inside a step).
#   cmake -DPROGRAM=... -DDATA=tests/cpp/data -P run_example.cmake
# tests/cpp/data/two-layers-proj-f64.lstmx: lstm_ext.export.save_model of
# nn.LSTM(3, 4, num_layers=2, proj_size=2, dtype=np.float64, seed=11), read
# as float32 (O = 2); stream-6x3.txt: 6 steps of 3 numbers.
cmake_minimum_required(VERSION 3.18)

execute_process(COMMAND "${PROGRAM}" "${DATA}/two-layers-proj-f64.lstmx"
                INPUT_FILE "${DATA}/stream-6x3.txt"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "lstm_stream failed (${rc}): ${err}")
endif()
string(STRIP "${out}" out)
string(REPLACE "\n" ";" lines "${out}")
list(LENGTH lines n)
if(NOT n EQUAL 6)
  message(FATAL_ERROR "expected 6 lines of output, got ${n}:\n${out}")
endif()
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^[-+0-9.e]+ [-+0-9.e]+$")
    message(FATAL_ERROR "expected two numbers a line, got '${line}'")
  endif()
endforeach()

execute_process(COMMAND "${PROGRAM}" "${DATA}/no-such-model.lstmx"
                INPUT_FILE "${DATA}/stream-6x3.txt"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 1 OR NOT err MATCHES "cannot open")
  message(FATAL_ERROR "a missing model: expected exit 1 and 'cannot open', got ${rc}: ${err}")
endif()

file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/partial.txt" "1 2 3\n4 5\n")
execute_process(COMMAND "${PROGRAM}" "${DATA}/two-layers-proj-f64.lstmx"
                INPUT_FILE "${CMAKE_CURRENT_BINARY_DIR}/partial.txt"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 1 OR NOT err MATCHES "ends inside a step")
  message(FATAL_ERROR "an input ending inside a step: expected exit 1, got ${rc}: ${err}")
endif()
