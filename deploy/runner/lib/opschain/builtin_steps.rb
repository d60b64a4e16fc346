# frozen_string_literal: true

require 'date'
require 'json'

module OpsChain
  # A child step the step-service carries out itself rather than as an action in a container: a group of steps
  # with its own strategy (OpsChain.steps), a wait step, an input step, or a wrapper that ignores its child's
  # failure. Each has a generated name, as in OpsChain's docs (opschain_wait_step_1…), to use in a steps: list.
  BuiltinStep = Struct.new(:name, :type, :step_name, :steps, :run_as, :ignore_failure, :seconds, :input_arguments, keyword_init: true)

  module BuiltinSteps
    INPUT_TYPES = %w[string boolean date float integer array hash].freeze
    ARGUMENT_OPTIONS = %i[default_value description gui_name overwrite path required type valid_values].freeze
    STEP_OPTIONS = %i[ignore_failure wait input_arguments step_name wait_step_name].freeze
    TRUE_WORDS = %w[true yes y on 1].freeze
    FALSE_WORDS = %w[false no n off 0].freeze

    class << self
      # Generated name → BuiltinStep, for the steps defined while actions.rb loads and runs.
      def all = (@all ||= {})

      def [](name) = all[name.to_s]

      def reset!
        @all = @counters = @wrapper_names = nil
      end

      def group(steps, run_as:, step_name:, ignore_failure: false)
        Dsl.validate_run_as(run_as)
        add('steps', type: 'group', steps: steps, run_as: run_as.to_s, ignore_failure: ignore_failure,
                     step_name: step_name || "#{run_as.to_s.capitalize} children")
      end

      def wait(seconds:, step_name:, steps:, ignore_failure:)
        unless seconds.nil? || (seconds.is_a?(Integer) && seconds.positive?)
          raise ArgumentError, "OpsChain.wait_step(seconds:) must be a whole number of seconds above 0, not #{seconds.inspect}#{Dsl.where}"
        end

        add('wait_step', type: 'wait', seconds: seconds, step_name: step_name, steps: steps, run_as: 'sequential', ignore_failure: ignore_failure)
      end

      def input(input_arguments:, step_name:, steps:, ignore_failure:)
        add('input_step', type: 'input', input_arguments: arguments(input_arguments), step_name: step_name, steps: steps,
                          run_as: 'sequential', ignore_failure: ignore_failure)
      end

      # OpsChain.step(action, …): the action wrapped by a wait or input step, or by an ignore-failure step.
      def wrap(action, options)
        unknown = options.keys - STEP_OPTIONS
        raise ArgumentError, "OpsChain.step: unknown option #{unknown.map(&:inspect).join(', ')} (known: #{STEP_OPTIONS.join(', ')})#{Dsl.where}" unless unknown.empty?
        return action if options.values_at(:ignore_failure, :wait, :input_arguments).none?

        wait, input, ignore = options.values_at(:wait, :input_arguments, :ignore_failure)
        raise ArgumentError, "OpsChain.step: wait: and input_arguments: cannot be used together#{Dsl.where}" if wait && input

        label = wrapper_label(action, wait, input, ignore)
        name = options[:wait_step_name] || options[:step_name]
        if input
          input(input_arguments: input, step_name: name || label, steps: [action], ignore_failure: ignore)
        elsif wait
          wait(seconds: wait == true ? nil : wait, step_name: name || label, steps: [action], ignore_failure: ignore)
        else
          ignore_failure(action, step_name: options[:step_name] || unique_label(label))
        end
      end

      def ignore_failure(action, step_name: nil)
        add('ignore_failure_step', type: 'group', steps: [action], run_as: 'sequential', ignore_failure: true,
                                   step_name: step_name || unique_label(wrapper_label(action, nil, nil, true)))
      end

      # A child definition of step_result.json for a built-in step, its own children included.
      def definition(step, seen = [])
        raise ArgumentError, "#{step.name} contains itself" if seen.include?(step.name)

        definition = { 'action' => step.name, 'type' => step.type }
        definition['step_name'] = step.step_name if step.step_name
        definition['ignore_failure'] = true if step.ignore_failure
        definition['wait_seconds'] = step.seconds if step.seconds
        definition['input_arguments'] = step.input_arguments if step.input_arguments
        definition['children'] = Dsl.step_names(step.steps).map { |child| Dsl.child_definition(child, seen + [step.name]) }
        definition['child_execution_strategy'] = step.run_as
        definition
      end

      private

      def add(kind, **fields)
        @counters ||= Hash.new(0)
        name = "opschain_#{kind}_#{@counters[kind] += 1}"
        all[name] = BuiltinStep.new(name: name, **fields)
        name
      end

      # The docs' default names: Run "Shutdown" waiting for explicit continue, ignoring failures.
      def wrapper_label(action, wait, input, ignore)
        parts = []
        parts << 'waiting for explicit continue' if wait == true
        parts << "waiting #{wait} seconds" if wait.is_a?(Integer)
        parts << 'waiting for input' if input
        parts << 'ignoring failures' if ignore
        "Run #{action.to_s.inspect} #{parts.join(', ')}"
      end

      # The same wrapper again gets a number: Run "Shutdown" ignoring failures 2.
      def unique_label(label)
        @wrapper_names ||= Hash.new(0)
        count = @wrapper_names[label] += 1
        count == 1 ? label : "#{label} #{count}"
      end

      # input_arguments: [:name, other: { path: '/x', type: :integer, … }, …] → plain definitions, checked now so
      # that a mistake shows while actions.rb loads, naming the argument and the line.
      def arguments(list)
        raise ArgumentError, "input_arguments: must be an array of names or name => options hashes#{Dsl.where}" unless list.is_a?(Array) && !list.empty?

        arguments = list.flat_map { |item| item.is_a?(Hash) ? item.map { |name, options| [name, options] } : [[item, {}]] }.map { |name, options| argument(name, options) }
        duplicate = arguments.map { |argument| argument['name'] }.tally.find { |_, count| count > 1 }
        raise ArgumentError, "input argument #{duplicate.first} is declared more than once#{Dsl.where}" if duplicate

        arguments
      end

      def argument(name, options)
        name = name.to_s
        fail_argument(name, 'needs a name without /') if name.empty? || name.include?('/')
        fail_argument(name, "options must be a hash, not #{options.inspect}") unless options.is_a?(Hash)
        unknown = options.keys.map(&:to_sym) - ARGUMENT_OPTIONS
        fail_argument(name, "unknown option #{unknown.join(', ')} (known: #{ARGUMENT_OPTIONS.join(', ')})") unless unknown.empty?
        options = options.transform_keys(&:to_sym)
        type = (options[:type] || :string).to_s
        fail_argument(name, "type must be one of #{INPUT_TYPES.join(', ')}, not #{options[:type].inspect}") unless INPUT_TYPES.include?(type)
        path = (options[:path] || '/').to_s
        fail_argument(name, "path must start with /, not #{path.inspect}") unless path.start_with?('/')
        argument = { 'name' => name, 'gui_name' => (options[:gui_name] || name.split('_').join(' ').capitalize).to_s, 'path' => path,
                     'type' => type, 'required' => options.fetch(:required, true) ? true : false, 'overwrite' => options[:overwrite] ? true : false }
        argument['description'] = options[:description].to_s unless options[:description].nil?
        argument['default_value'] = convert(name, type, options[:default_value], 'default_value') unless options[:default_value].nil?
        add_valid_values(argument, options[:valid_values]) unless options[:valid_values].nil?
        argument
      end

      def add_valid_values(argument, values)
        name, type = argument.values_at('name', 'type')
        fail_argument(name, "valid_values cannot be given for the #{type} type") if %w[array hash].include?(type)
        fail_argument(name, 'valid_values must be a non-empty array') unless values.is_a?(Array) && !values.empty?
        argument['valid_values'] = values.map { |value| convert(name, type, value, 'valid_values') }.uniq
        return unless argument.key?('default_value') && !argument['valid_values'].include?(argument['default_value'])

        fail_argument(name, "default_value #{argument['default_value'].inspect} is not one of its valid_values")
      end

      # A value as the argument's type, or an error when that would lose information (1.5 as an integer).
      def convert(name, type, value, what)
        converted = InputValue.convert(type, value)
        fail_argument(name, "#{what} #{value.inspect} cannot be a #{type}") if converted.equal?(InputValue::INVALID)
        converted
      end

      def fail_argument(name, message)
        raise ArgumentError, "input argument #{name}: #{message}#{Dsl.where}"
      end
    end
  end

  # The conversion of input values to an argument's type; the step-service applies the same rules to the values
  # a caller supplies (ContinueChange).
  module InputValue
    INVALID = Object.new.freeze

    module_function

    def convert(type, value)
      case type
      when 'string' then value.is_a?(String) || value.is_a?(Symbol) || value.is_a?(Numeric) || [true, false].include?(value) ? value.to_s : INVALID
      when 'integer' then integer(value)
      when 'float' then float(value)
      when 'boolean' then boolean(value)
      when 'date' then date(value)
      when 'array' then value.is_a?(Array) ? JSON.parse(JSON.generate(value)) : INVALID
      when 'hash' then value.is_a?(Hash) ? JSON.parse(JSON.generate(value)) : INVALID
      else INVALID
      end
    end

    def integer(value)
      return value if value.is_a?(Integer)
      return value.to_i if value.is_a?(Float) && value.finite? && value == value.floor
      return Integer(value.strip, 10) if value.is_a?(String) && value.strip.match?(/\A[+-]?\d+\z/)

      INVALID
    end

    def float(value)
      return value.to_f if value.is_a?(Numeric)
      return Float(value.strip) if value.is_a?(String) && value.strip.match?(/\A[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\z/)

      INVALID
    end

    def boolean(value)
      return value if [true, false].include?(value)

      word = value.to_s.strip.downcase
      return true if BuiltinSteps::TRUE_WORDS.include?(word)
      return false if BuiltinSteps::FALSE_WORDS.include?(word)

      INVALID
    end

    def date(value)
      return value.iso8601 if value.is_a?(Date)
      return INVALID unless value.is_a?(String) && value.match?(/\A\d{4}-\d{2}-\d{2}\z/)

      Date.iso8601(value).iso8601
    rescue Date::Error
      INVALID
    end
  end
end
